"""Where a pooled run's time goes, step by step, against a bare spawn taken in turn.

    python bench/run_steps_bench.py [RUNS]      # as an unprivileged user

One `box.run(["/bin/true"])` in a warm box (the `strict` policy, the judge's
limits), split at the points the supervisor sees:
- prepare: from the call to the request's send (environment, rlimits, the
  filter, the fds, the request's tokens);
- send: the request's sendmsg to the spawner, which wakes it: the bare spawn taken between two
  runs here outlasts the spawner's spin after a report (a judge's runs back to back mostly find it
  spinning);
- spawner: from the send to the report's arrival, less what the spawner
  itself measured of the run (its `wall`): the two wake-ups across the socket
  and the spawner's parsing and report;
- run: the spawner's `wall`, from its vfork of the program to the last reap;
- finish: from the report to the Result (captured output, accounting, verdict).
The steps are timed by wrapping the Box methods that mark them, so the total
here includes that wrapping (a few microseconds).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import trio

from sandbox import Limits, SandboxPool
from sandbox.box.supervisor import Box

JUDGE_LIMITS = Limits(cpu_time=1.0, wall_time=3.0, memory=256 * 2**20, pids=1)
marks: dict[str, float] = {}
original_start, original_recv = Box.start_run, Box._recv_report


async def start_run(self: Box, *args: Any) -> None:
    marks["send"] = time.perf_counter()
    await original_start(self, *args)
    marks["sent"] = time.perf_counter()


async def recv_report(self: Box) -> dict[str, Any]:
    report = await original_recv(self)
    marks["report"] = time.perf_counter()
    marks["wall"] = report.get("wall", 0.0)
    return report


def bare_spawn() -> float:
    t = time.perf_counter()
    os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)
    return time.perf_counter() - t


async def main(n: int) -> None:
    Box.start_run, Box._recv_report = start_run, recv_report  # type: ignore[method-assign]
    steps: dict[str, list[float]] = {k: [] for k in ("prepare", "send", "spawner", "run", "finish", "total", "bare")}
    async with SandboxPool(size=1, policy="strict", limits=JUDGE_LIMITS) as pool, pool.acquire() as box:
        for _ in range(20):
            await box.run(["/bin/true"])
        for _ in range(n):
            t = time.perf_counter()
            await box.run(["/bin/true"])
            end = time.perf_counter()
            steps["prepare"].append(marks["send"] - t)
            steps["send"].append(marks["sent"] - marks["send"])
            steps["spawner"].append(marks["report"] - marks["sent"] - marks["wall"])
            steps["run"].append(marks["wall"])
            steps["finish"].append(end - marks["report"])
            steps["total"].append(end - t)
            steps["bare"].append(bare_spawn())
    bare = statistics.median(steps["bare"])
    print("| step | median | of a bare spawn |\n|---|---:|---:|")
    for name, what in (("prepare", "prepare (Python: env, rlimits, fds, tokens)"), ("send", "send (sendmsg)"),
                       ("spawner", "spawner round trip, less the run"), ("run", "run (spawner's vfork to reap)"),
                       ("finish", "finish (Python: output, accounting, verdict)"),
                       ("total", "the pooled run"), ("bare", "bare posix_spawn+waitpid of /bin/true")):
        m = statistics.median(steps[name])
        print(f"| {what} | {m * 1e6:.0f} us | {m / bare:.2f}x |")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 500)
