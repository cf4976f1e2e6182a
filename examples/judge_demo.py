"""Judge-style demo: compile each solution of examples/sum inside a sandbox, run it on every test, print verdicts.

Uses the async API directly: one Sandbox per solution, the compiler and the
runs sharing its /box, every run under CPU, wall, memory and process limits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from sandbox import Bind, Limits, Sandbox

PROBLEM = Path(__file__).resolve().parent / "sum"
COMPILE = Limits(cpu_time=20.0, wall_time=40.0, pids=32)
RUN = Limits(cpu_time=1.0, wall_time=3.0, memory=64 * 2**20, pids=1, output=1 << 20)


def same_tokens(got: bytes, want: bytes) -> bool:
    return got.split() == want.split()


async def judge(solution: Path) -> list[str]:
    tests = sorted(PROBLEM.glob("tests/*.in"), key=lambda p: int(p.stem))
    async with Sandbox(binds=[Bind(str(PROBLEM), "/problem", False)]) as box:
        c = await box.run(["gcc", "-O2", "-o", "/box/sol", f"/problem/solutions/{solution.name}"], limits=COMPILE)
        if c.status != "OK":
            return [f"CE ({c.message}): {c.stderr.decode(errors='replace')[:200]}"]
        verdicts = []
        for test in tests:
            r = await box.run(["/box/sol"], stdin=test.read_bytes(), limits=RUN)
            status = r.status.value
            if status == "OK" and not same_tokens(r.stdout, test.with_suffix(".out").read_bytes()):
                status = "WA"
            verdicts.append(f"{test.stem}:{status} {r.cpu_time * 1000:.0f}ms {r.memory_peak // 1024}KiB")
        return verdicts


async def main() -> int:
    solutions = sorted(PROBLEM.glob("solutions/*.c"))
    print(f"problem {PROBLEM.name}: {len(list(PROBLEM.glob('tests/*.in')))} tests, limits: 1 s CPU, 64 MiB, 1 process")
    all_ok = True
    for solution in solutions:
        verdicts = await judge(solution)
        print(f"{solution.name:8} " + "  ".join(verdicts))
        all_ok &= solution.stem != "ok" or all(":OK " in v for v in verdicts)
    if not all_ok:
        print("demo: the correct solution did not pass", file=sys.stderr)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
