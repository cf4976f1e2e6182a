"""Start-up cost of one sandboxed /bin/true, against bubblewrap, interleaved round by round.

Each round runs, in turn: bwrap, `sbx run --policy strict -- /bin/true`
(a new Python process, as a user types it), `Sandbox()` + run + close in
this process, and, with `--old PYTHON`, the same `sbx run` through another
install (a venv's python) to compare two builds in the same run.  This VM
drifts by tens of percent, so only ratios within a round's medians count.
Also: the per-run cost inside a built box, and how late a CPU-time kill lands.

Run as an unprivileged user:  python bench/start_bench.py [N] [--old /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

import anyio

from sandbox import Limits, Sandbox

BWRAP = [
    "bwrap", "--unshare-all", "--die-with-parent", "--proc", "/proc", "--dev", "/dev", "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
    "--symlink", "usr/sbin", "/sbin", "--tmpfs", "/tmp", "/bin/true",
]


def sbx_run(python: str) -> list[str]:
    return [python, "-m", "sandbox", "run", "--policy", "strict", "--", "/bin/true"]


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


async def sandbox_once() -> float:
    t = time.perf_counter()
    async with Sandbox(policy="strict") as box:
        r = await box.run(["/bin/true"])
    assert r.status == "OK"
    return time.perf_counter() - t


async def in_box(n: int) -> list[float]:
    async with Sandbox(policy="strict") as box:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            r = await box.run(["/bin/true"])
            samples.append(time.perf_counter() - t)
            assert r.status == "OK"
        return samples


async def kill_latency(n: int, limit: float) -> list[float]:
    late = []
    async with Sandbox() as box:
        for _ in range(n):
            r = await box.run(["sh", "-c", "while :; do :; done"], limits=Limits(cpu_time=limit))
            assert r.status == "TLE"
            late.append(r.cpu_time - limit)
    return late


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=30)
    parser.add_argument("--old", help="another install's python, to time its `sbx run` in the same rounds")
    args = parser.parse_args()
    if not shutil.which("bwrap"):
        raise SystemExit("bwrap not found (apt-get install bubblewrap)")
    rows: dict[str, list[float]] = {"bwrap --unshare-all ... /bin/true": [],
                                    "sbx run --policy strict -- /bin/true": [],
                                    "Sandbox(policy='strict') + run + close (API)": []}
    if args.old:
        rows["the same sbx run, --old install"] = []
    for _ in range(args.n):
        rows["bwrap --unshare-all ... /bin/true"].append(timed(BWRAP))
        rows["sbx run --policy strict -- /bin/true"].append(timed(sbx_run(sys.executable)))
        rows["Sandbox(policy='strict') + run + close (API)"].append(anyio.run(sandbox_once))
        if args.old:
            rows["the same sbx run, --old install"].append(timed(sbx_run(args.old)))
    rows["box.run(['/bin/true']) in a built box (API)"] = anyio.run(in_box, args.n)
    bw = statistics.median(rows["bwrap --unshare-all ... /bin/true"])
    print(f"| what ({args.n} interleaved rounds) | median ms | vs bwrap |")
    print("|---|---:|---:|")
    for name, samples in rows.items():
        m = statistics.median(samples)
        print(f"| {name} | {m * 1000:.2f} | {m / bw:.2f}x |")
    late = anyio.run(kill_latency, max(args.n // 3, 5), 0.2)
    print(f"\nCPU-time kill latency (limit 0.2 s, n={len(late)}): median {statistics.median(late) * 1000:.2f} ms, "
          f"max {max(late) * 1000:.2f} ms after the limit")


if __name__ == "__main__":
    main()
