"""The judge path: per-run cost in a warm pool, throughput, and interactive round trips, against peers.

    python bench/judge_bench.py [RUNS]      # as an unprivileged user

Peers in the same run: a bare posix_spawn+waitpid of /bin/true from this
process, alternating with the pooled runs; a loop of bubblewrap starts with as many workers as cores; the same
ping/pong programs joined by plain pipes outside any sandbox.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

from sandbox import Limits, SandboxPool, run_interactive

HERE = Path(__file__).resolve().parent
BWRAP = ["bwrap", "--unshare-all", "--die-with-parent", "--proc", "/proc", "--dev", "/dev", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "/bin/true"]
ROUNDS = 100_000
JUDGE_LIMITS = Limits(cpu_time=1.0, wall_time=3.0, memory=256 * 2**20, pids=1)
"""What `sbx judge` sets on every run: the spawner watches CPU, wall time and (without cgroup v2) memory, so
they are part of the cost."""
FORKING_LIMITS = JUDGE_LIMITS.replace(pids=64)
"""The same for a run that may fork: without cgroup v2 the spawner then traces it (see spawner.c)."""


def bare_spawn(n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["true"], {})
        os.waitpid(pid, 0)
        samples.append(time.perf_counter() - t)
    return samples


async def pool_runs(n: int, limits: Limits) -> tuple[list[float], list[float]]:
    """Pooled runs and bare spawns taken in turn: this VM's speed drifts by tens of percent within seconds."""
    async with SandboxPool(size=1, policy="strict", limits=limits) as pool:
        async with pool.acquire() as box:
            for _ in range(20):
                await box.run(["/bin/true"])
            pooled, bare = [], []
            for _ in range(n):
                t = time.perf_counter()
                await box.run(["/bin/true"])
                pooled.append(time.perf_counter() - t)
                bare += bare_spawn(1)
    return pooled, bare


async def pool_throughput(seconds: float, workers: int) -> float:
    count = 0
    async with SandboxPool(size=workers, policy="strict", limits=JUDGE_LIMITS) as pool:
        async def worker() -> None:
            nonlocal count
            with trio.move_on_after(seconds):
                while True:
                    async with pool.acquire() as box:
                        await box.run(["/bin/true"])
                    count += 1
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
    return count / seconds


def bwrap_throughput(seconds: float, workers: int) -> float:
    count = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal count
        while time.monotonic() < deadline:
            subprocess.run(BWRAP, check=True)
            with lock:
                count += 1
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / seconds


def build(tmp: Path) -> tuple[Path, Path]:
    out = []
    for name in ("ping", "pong"):
        exe = tmp / name
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "programs" / f"{name}.c")], check=True)
        out.append(exe)
    return out[0], out[1]


def plain_pingpong(ping: Path, pong: Path) -> float:
    t = time.perf_counter()
    a = subprocess.Popen([str(ping), str(ROUNDS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    b = subprocess.Popen([str(pong)], stdin=a.stdout, stdout=a.stdin)
    a.stdin.close()  # type: ignore[union-attr]
    a.stdout.close()  # type: ignore[union-attr]
    assert a.wait() == 0 and b.wait() == 0
    return time.perf_counter() - t


async def sandboxed_pingpong(ping: Path, pong: Path) -> float:
    async with SandboxPool(size=2) as pool:
        async with pool.acquire() as a, pool.acquire() as b:
            await a.write_file("ping", ping.read_bytes(), 0o755)
            await b.write_file("pong", pong.read_bytes(), 0o755)
            t = time.perf_counter()
            ra, rb = await run_interactive(a, ["./ping", str(ROUNDS)], b, ["./pong"],
                                           limits_a=Limits(wall_time=120), limits_b=Limits(wall_time=120))
            elapsed = time.perf_counter() - t
    assert ra.status == "OK" and rb.status == "OK", (ra, rb)
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    cores = len(os.sched_getaffinity(0))
    print("| what | result | ratio |\n|---|---:|---:|")
    for limits, what in ((JUDGE_LIMITS, "pids 1 (sbx judge)"), (FORKING_LIMITS, "pids 64")):
        pooled, bare = (statistics.median(samples) for samples in trio.run(pool_runs, n, limits))
        print(f"| bare posix_spawn+waitpid /bin/true, median of {n} | {bare * 1000:.3f} ms | 1.00x |")
        print(f"| pooled box.run(['/bin/true']), strict policy, CPU/wall/memory limits, {what}, median of {n} "
              f"| {pooled * 1000:.3f} ms | {pooled / bare:.2f}x |")
    if shutil.which("bwrap"):
        bw = bwrap_throughput(3.0, cores)
        ours = trio.run(pool_throughput, 3.0, cores)
        print(f"| bwrap loop, {cores} workers | {bw:.0f} runs/s | 1.00x |")
        print(f"| pool, {cores} concurrent runs | {ours:.0f} runs/s | {ours / bw:.2f}x |")
    with tempfile.TemporaryDirectory() as d:
        ping, pong = build(Path(d))
        plain = min(plain_pingpong(ping, pong) for _ in range(3))
        boxed = min(trio.run(sandboxed_pingpong, ping, pong) for _ in range(3))
    print(f"| ping-pong {ROUNDS} round trips, plain pipes | {plain:.3f} s | 1.00x |")
    print(f"| ping-pong {ROUNDS} round trips, two boxes | {boxed:.3f} s | {boxed / plain:.2f}x |")


if __name__ == "__main__":
    main()
