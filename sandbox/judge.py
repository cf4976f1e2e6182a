"""`sbx judge`: compile a solution, run it on every test in a pool of boxes, check, and give verdicts.

The compiler runs under the `compile` seccomp policy, the solution under
`strict` (one process and its threads), the checker under `default`.

The compiler runs in a box of its own; the binary is copied out of it and
into each test's box, so a test never sees another test's files.  Checkers
run sandboxed too (testlib convention: `checker INPUT OUTPUT ANSWER`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from .api import Sandbox
from .errors import ConfigError
from .limits import Limits
from .pool import SandboxPool
from .result import Result, Status

LANGS = {
    "c": (("gcc", "-O2", "-std=gnu17", "-o", "sol", "sol.c", "-lm"), "sol.c", ("./sol",)),
    "cpp": (("g++", "-O2", "-std=gnu++17", "-o", "sol", "sol.cpp"), "sol.cpp", ("./sol",)),
    "py": (None, "sol.py", ("python3", "sol.py")),
}
EXTENSIONS = {".c": "c", ".cpp": "cpp", ".cc": "cpp", ".cxx": "cpp", ".py": "py"}
COMPILE_POLICY = "compile"
RUN_POLICY = "strict"
COMPILE_LIMITS = Limits(cpu_time=30.0, wall_time=60.0, memory=None, pids=64, output=1 << 20)


@dataclass
class TestCase:
    name: str
    input: Path
    answer: Path


@dataclass
class Verdict:
    name: str
    status: str
    result: Result | None = None
    message: str = ""

    def record(self) -> dict[str, Any]:
        r = self.result
        return {"name": self.name, "status": self.status, "cpu_time": r.cpu_time if r else 0.0,
                "wall_time": r.wall_time if r else 0.0, "memory_peak": r.memory_peak if r else 0,
                "message": self.message or (r.message if r else "")}


@dataclass
class Report:
    compile: Result | None
    tests: list[Verdict] = field(default_factory=list)
    compile_error: str = ""

    @property
    def verdict(self) -> str:
        if self.compile_error:
            return "CE"
        return next((t.status for t in self.tests if t.status != "OK"), "OK")

    def record(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "compile": self.compile.record() if self.compile else None,
                "tests": [t.record() for t in self.tests]}


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def find_tests(directory: Path) -> list[TestCase]:
    if not directory.is_dir():
        raise ConfigError(f"--tests {directory}: not a directory")
    tests = []
    for inp in directory.glob("*.in"):
        answer = next((p for p in (inp.with_suffix(".out"), inp.with_suffix(".ans")) if p.is_file()), None)
        if answer is None:
            raise ConfigError(f"--tests {directory}: {inp.name} has no {inp.stem}.out or {inp.stem}.ans")
        tests.append(TestCase(inp.stem, inp, answer))
    if not tests:
        raise ConfigError(f"--tests {directory}: no NAME.in files")
    return sorted(tests, key=lambda t: _natural(t.name))


def detect_lang(solution: Path, lang: str | None) -> str:
    if lang is not None:
        if lang not in LANGS:
            raise ConfigError(f"--lang: unknown language {lang!r} (expected {', '.join(LANGS)})")
        return lang
    try:
        return EXTENSIONS[solution.suffix]
    except KeyError:
        raise ConfigError(f"{solution}: cannot tell the language from {solution.suffix!r}; use --lang") from None


def tokens_match(output: bytes, answer: bytes) -> bool:
    return output.split() == answer.split()


async def judge(solution: Path, tests: list[TestCase], *, lang: str, limits: Limits, checker: Path | None = None,
                progress: TextIO | None = None, workers: int | None = None) -> Report:
    compile_argv, source_name, run_argv = LANGS[lang]
    try:
        source = solution.read_bytes()
    except OSError as e:
        raise ConfigError(f"{solution}: {e.strerror}") from None
    checker_bin = _read_executable(checker) if checker else None
    files = {source_name: (source, 0o644)}
    report = Report(compile=None)
    if compile_argv is not None:
        async with Sandbox(policy=COMPILE_POLICY) as box:
            await box.write_file(source_name, source)
            result = await box.run(compile_argv, limits=COMPILE_LIMITS)
            report.compile = result
            if result.status is not Status.OK:
                report.compile_error = result.stderr.decode(errors="replace")[-2000:] or result.message
                return report
            files = {"sol": (await box.read_file("sol"), 0o755)}
    report.tests = [Verdict(t.name, "") for t in tests]
    pool_size = workers or len(os.sched_getaffinity(0))
    async with SandboxPool(size=min(pool_size, len(tests)), policy=RUN_POLICY) as pool:
        async def one(i: int, test: TestCase) -> None:
            async with pool.acquire() as box:
                for name, (data, mode) in files.items():
                    await box.write_file(name, data, mode)
                result = await box.run(list(run_argv), stdin=test.input.read_bytes(), limits=limits)
                verdict = Verdict(test.name, result.status.value, result)
                if result.status is Status.OK:
                    verdict.status, verdict.message = await _check(box, test, result.stdout, checker_bin)
            report.tests[i] = verdict
            if progress:
                print(f"  test {test.name}: {verdict.status} {result.cpu_time:.3f}s {result.memory_peak // 1024}KiB",
                      file=progress, flush=True)

        async with trio.open_nursery() as nursery:
            for i, test in enumerate(tests):
                nursery.start_soon(one, i, test)
    return report


def _read_executable(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"--checker {path}: {e.strerror}") from None


async def _check(box: Sandbox, test: TestCase, output: bytes, checker: bytes | None) -> tuple[str, str]:
    answer = test.answer.read_bytes()
    if checker is None:
        return ("OK", "") if tokens_match(output, answer) else ("WA", "output differs from the answer")
    await box.write_file("checker", checker, 0o755)
    await box.write_file("input", test.input.read_bytes())
    await box.write_file("output", output)
    await box.write_file("answer", answer)
    r = await box.run(["./checker", "input", "output", "answer"], limits=Limits(cpu_time=10.0, wall_time=20.0),
                      policy="default")  # a checker may be a script
    comment = (r.stderr or r.stdout).decode(errors="replace").strip()[:200]
    if r.status is Status.OK:
        return "OK", comment
    if r.status is Status.RE:
        return "WA", comment or f"checker exit status {r.exit_code}"
    return "IE", f"checker failed: {r.status.value} {r.message}"


def table(report: Report) -> str:
    lines = []
    if report.compile_error:
        lines.append("compilation failed:\n" + report.compile_error.rstrip())
    if report.tests:
        lines.append(f"{'test':<12} {'status':<6} {'cpu (s)':>8} {'memory':>10}")
        for t in report.tests:
            r = t.result
            cpu = f"{r.cpu_time:.3f}" if r else "-"
            mem = f"{r.memory_peak // 1024} KiB" if r else "-"
            lines.append(f"{t.name:<12} {t.status:<6} {cpu:>8} {mem:>10}")
    lines.append(f"verdict: {report.verdict}")
    return "\n".join(lines)
