"""What cgroups change: TLE kill latency measured by the kernel's own accounting, and the per-run cost.

Run where a delegated cgroup v2 exists, e.g. in the guest kernel:
    tests/guest/run USER VENV_PYTHON VENV_PYTHON bench/cgroup_bench.py [N]
Prints a markdown table.  Latency is `cpu_time - limit` of the TLE record,
where cpu_time is the run cgroup's cpu.stat (every thread of every process).
The peer for the per-run cost is a bare fork+exec+wait of /bin/true in the
same run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from sandbox import Bind, Limits, Sandbox
from sandbox.box.cgroups import delegation

PROGRAM = Path(__file__).resolve().parent.parent / "tests" / "programs" / "busy_threads.c"


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1e3:.2f} ms, max {max(xs) * 1e3:.2f} ms"


async def main(n: int) -> None:
    found = delegation()
    if found.base is None:
        sys.exit(f"cgroup_bench: no delegated cgroup v2 here: {found.reason}")
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        subprocess.run(["gcc", "-O1", "-pthread", "-o", f"{d}/busy_threads", str(PROGRAM)], check=True)
        limit = 0.5
        async with Sandbox(binds=[Bind(d, "/t", False)], policy="strict") as box:
            late: dict[str, list[float]] = {"1 thread": [], "4 threads": []}
            spinners = {"1 thread": ["sh", "-c", "while :; do :; done"], "4 threads": ["/t/busy_threads"]}
            for _ in range(n):
                for name, argv in spinners.items():
                    r = await box.run(argv, limits=Limits(cpu_time=limit), policy="default")
                    assert r.status == "TLE", r
                    assert r.enforcement["pids"] == "cgroup", r.enforcement
                    late[name].append(r.cpu_time - limit)
            per_run = []
            for _ in range(10 * n):
                t = time.perf_counter()
                await box.run(["/bin/true"])
                per_run.append(time.perf_counter() - t)
    bare = []
    for _ in range(10 * n):
        t = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        bare.append(time.perf_counter() - t)
    print(f"| what (n={n}, cgroups at {found.base}) | result |\n|---|---|")
    for name, xs in late.items():
        print(f"| TLE kill latency, {name}, limit {limit} s | {ms(xs)} after the limit |")
    ratio = statistics.median(per_run) / statistics.median(bare)
    print(f"| /bin/true in a built box, strict policy, run cgroup | {ms(per_run)} |")
    print(f"| bare fork+exec+wait (subprocess.run) | {ms(bare)} |")
    print(f"| ratio box/bare | {ratio:.2f}x |")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 10)
