"""Start-up cost of one sandboxed /bin/true, against bubblewrap and a bare fork+exec, in the same run.

Also: the per-run cost inside an already-built box (the judge's path) on
asyncio and on trio, and how late a CPU-time kill lands after the limit.  Prints a markdown table;
run as an unprivileged user:  python bench/start_bench.py [N]
"""

from __future__ import annotations

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
SBX = [sys.executable, "-m", "sandbox", "run", "--", "/bin/true"]


def timed(cmd: list[str], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        samples.append(time.perf_counter() - t)
    return samples


async def in_box(n: int) -> tuple[list[float], float]:
    async with Sandbox() as box:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            r = await box.run(["/bin/true"])
            samples.append(time.perf_counter() - t)
            assert r.status == "OK"
        t = time.perf_counter()
        await box.run(["/bin/true"])
        return samples, time.perf_counter() - t


async def kill_latency(n: int, limit: float) -> list[float]:
    late = []
    async with Sandbox() as box:
        for _ in range(n):
            r = await box.run(["sh", "-c", "while :; do :; done"], limits=Limits(cpu_time=limit))
            assert r.status == "TLE"
            late.append(r.cpu_time - limit)
    return late


async def box_build(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        async with Sandbox():
            pass
        samples.append(time.perf_counter() - t)
    return samples


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    rows: dict[str, list[float]] = {"fork+exec /bin/true (subprocess.run)": timed(["/bin/true"], n)}
    if shutil.which("bwrap"):
        rows["bwrap --unshare-all ... /bin/true"] = timed(BWRAP, n)
    rows["sbx run -- /bin/true (CLI, new Python)"] = timed(SBX, n)
    for backend in ("asyncio", "trio"):
        rows[f"Sandbox() build + close (API, {backend})"] = anyio.run(box_build, n, backend=backend)
        rows[f"box.run(['/bin/true']) in a built box (API, {backend})"] = anyio.run(in_box, n, backend=backend)[0]
    base = statistics.median(rows["fork+exec /bin/true (subprocess.run)"])
    bw = statistics.median(rows.get("bwrap --unshare-all ... /bin/true", [float("nan")]))
    print(f"| what (n={n}) | median ms | vs fork+exec | vs bwrap |")
    print("|---|---:|---:|---:|")
    for name, samples in rows.items():
        m = statistics.median(samples)
        print(f"| {name} | {m * 1000:.2f} | {m / base:.1f}x | {m / bw:.2f}x |")
    late = anyio.run(kill_latency, max(n // 3, 5), 0.2)
    print(f"\nCPU-time kill latency (limit 0.2 s, n={len(late)}): median {statistics.median(late) * 1000:.2f} ms, "
          f"max {max(late) * 1000:.2f} ms after the limit")


if __name__ == "__main__":
    main()
