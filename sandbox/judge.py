"""`sbx judge`: compile a solution, run it on every test in a pool of boxes, check, and give verdicts.

The compiler runs under the `compile` seccomp policy, the solution under
`strict` (one process and its threads), the checker under `default`.

The compiler runs in a box of its own; the binary is copied out of it and
into each test's box, so a test never sees another test's files.  Checkers
run sandboxed too, in boxes of their own: a solution's box may hold anything
it wrote (a module a Python checker would import, a directory where the
checker's output file goes), so the checker never runs there; only the
solution's captured output is copied over.  Checkers follow testlib's
convention: `checker INPUT OUTPUT ANSWER`, exit 0 OK, 1 WA, 2 PE, anything
else (3 is testlib's "fail") or a checker that does not end normally IE.
Every test gets a verdict: a box that fails during one test makes that test
IE, not the whole judging a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

from .api import Sandbox
from .errors import ConfigError, SandboxError
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
CHECKER_POLICY = "default"  # a checker may be a script
CHECKER_LIMITS = Limits(cpu_time=10.0, wall_time=20.0)
CHECKER_ENV = {"PYTHONSAFEPATH": "1", "PYTHONNOUSERSITE": "1"}  # a Python checker imports nothing from its dir
TESTLIB_EXIT = {0: "OK", 1: "WA", 2: "PE"}


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
    pool_size = min(workers or len(os.sched_getaffinity(0)), len(tests))
    async with contextlib.AsyncExitStack() as stack:
        runs = await stack.enter_async_context(SandboxPool(size=pool_size, policy=RUN_POLICY))
        checks = None if checker_bin is None else await stack.enter_async_context(
            SandboxPool(size=pool_size, policy=CHECKER_POLICY, env=CHECKER_ENV))

        async def one(i: int, test: TestCase) -> None:
            try:
                verdict = await _run_test(runs, checks, files, run_argv, test, limits, checker_bin)
            except SandboxError as e:
                verdict = Verdict(test.name, "IE", message=f"the sandbox failed: {e}")
            report.tests[i] = verdict
            if progress:
                r = verdict.result
                print(f"  test {test.name}: {verdict.status} {r.cpu_time if r else 0:.3f}s "
                      f"{r.memory_peak // 1024 if r else 0}KiB", file=progress, flush=True)

        async with trio.open_nursery() as nursery:
            for i, test in enumerate(tests):
                nursery.start_soon(one, i, test)
    return report


async def _run_test(runs: SandboxPool, checks: SandboxPool | None, files: dict[str, tuple[bytes, int]],
                    run_argv: tuple[str, ...], test: TestCase, limits: Limits, checker: bytes | None) -> Verdict:
    async with runs.acquire() as box:
        for name, (data, mode) in files.items():
            await box.write_file(name, data, mode)
        result = await box.run(list(run_argv), stdin=test.input.read_bytes(), limits=limits)
    verdict = Verdict(test.name, result.status.value, result)
    if result.status is Status.OK:
        answer = test.answer.read_bytes()
        if checks is None or checker is None:
            ok = tokens_match(result.stdout, answer)
            verdict.status, verdict.message = ("OK", "") if ok else ("WA", "output differs from the answer")
        else:
            async with checks.acquire() as box:
                verdict.status, verdict.message = await _check(box, test.input.read_bytes(), result.stdout, answer,
                                                               checker)
    return verdict


def _read_executable(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"--checker {path}: {e.strerror}") from None


async def _check(box: Sandbox, given: bytes, output: bytes, answer: bytes, checker: bytes) -> tuple[str, str]:
    """The checker's verdict, in a box that holds only the checker and its three files."""
    for name, data, mode in (("checker", checker, 0o755), ("input", given, 0o644), ("output", output, 0o644),
                             ("answer", answer, 0o644)):
        await box.write_file(name, data, mode)
    r = await box.run(["./checker", "input", "output", "answer"], limits=CHECKER_LIMITS)
    comment = (r.stderr or r.stdout).decode(errors="replace").strip()[:200]
    if r.status in (Status.OK, Status.RE) and (r.exit_code or 0) in TESTLIB_EXIT:
        return TESTLIB_EXIT[r.exit_code or 0], comment
    why = f"exit status {r.exit_code}" if r.status is Status.RE else f"{r.status.value} {r.message}"
    return "IE", f"checker failed ({why})" + (f": {comment}" if comment else "")


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
