"""`sbx judge`: compile a solution, run it on every test in a pool of boxes, check, and give verdicts.

The language table (languages.py) says how: the compiler runs in a box of
its own under the language's compile policy; what it made (the artifacts)
is copied out of it and into each test's box, so a test never sees another
test's files.  Each test runs under the run policy with the language's
process limit; its stack may take the whole memory limit, as judges allow
deep recursion.  Checkers run in boxes of their own (checking.py).  Every
test gets a verdict: a box that fails during one test makes that test IE,
not the whole judging a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

from ..api import Sandbox
from ..errors import BoxFileError, ConfigError, SandboxError
from ..limits import Limits
from ..pool import SandboxPool
from ..result import Result, Status
from .checking import CHECKER_ENV, CHECKER_POLICY, check, compare
from .languages import Language
from .report import Report, Verdict

COMPILE_LIMITS = Limits(cpu_time=60.0, wall_time=120.0, memory=None, pids=256, output=1 << 20)


@dataclass(frozen=True)
class TestCase:
    name: str
    input: Path
    answer: Path


@dataclass(frozen=True)
class Options:
    """How to judge, beyond the solution and its tests."""

    limits: Limits  # of each test's run
    checker: bytes | None = None
    jobs: int | None = None  # tests run at once (default: one per CPU)
    stop_on_first_failure: bool = False
    progress: TextIO | None = None


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


async def judge(source: bytes, language: Language, tests: list[TestCase], options: Options) -> Report:
    report = Report(language.name)
    env = language.environment(options.limits.memory)
    files = {language.source: (source, 0o644)}
    if language.compile is not None:
        compiled = await _compile(source, language, env, report)
        if compiled is None:
            return report
        files = compiled
    jobs = min(options.jobs or len(os.sched_getaffinity(0)), len(tests))
    verdicts: dict[int, Verdict] = {}
    first_failure = len(tests)
    scopes: dict[int, trio.CancelScope] = {}
    async with contextlib.AsyncExitStack() as stack:
        runs = await stack.enter_async_context(SandboxPool(size=jobs, policy=language.run_policy, env=env))
        checks = None if options.checker is None else await stack.enter_async_context(
            SandboxPool(size=jobs, policy=CHECKER_POLICY, env=CHECKER_ENV))
        slots = trio.Semaphore(jobs)

        async def one(i: int, test: TestCase) -> None:
            nonlocal first_failure
            with scopes[i]:
                try:
                    verdict = await _run_test(runs, checks, files, language, test, options)
                except SandboxError as e:
                    verdict = Verdict(test.name, "IE", message=f"the sandbox failed: {e}")
                verdicts[i] = verdict
                if verdict.status != "OK" and options.stop_on_first_failure and i < first_failure:
                    first_failure = i
                    for j, scope in scopes.items():
                        if j > i:
                            scope.cancel()
                _progress(options.progress, verdict)
            slots.release()

        async with trio.open_nursery() as nursery:
            for i, test in enumerate(tests):
                await slots.acquire()  # in order: a later test starts only when a box is free
                if i > first_failure:
                    slots.release()
                    break
                scopes[i] = trio.CancelScope()
                nursery.start_soon(one, i, test)
    last = first_failure if options.stop_on_first_failure else len(tests) - 1
    report.tests = [verdicts[i] for i in range(min(last + 1, len(tests)))]
    report.skipped = len(tests) - len(report.tests)
    return report


async def _compile(source: bytes, language: Language, env: dict[str, str],
                   report: Report) -> dict[str, tuple[bytes, int]] | None:
    """The artifacts of a successful compile, else None with the report's compile error set."""
    assert language.compile is not None
    async with Sandbox(policy=language.compile_policy, env=env) as box:
        await box.write_file(language.source, source)
        result = report.compile = await box.run(list(language.compile), limits=COMPILE_LIMITS)
        if result.status is not Status.OK:
            said = (result.stderr or result.stdout).decode(errors="replace")
            report.compile_error = said[-2000:] or result.message
            return None
        files = {}
        for name in language.artifacts:
            try:
                files[name] = (await box.read_file(name), 0o755)
            except BoxFileError as e:
                report.compile_error = f"the compiler ended OK but left no {name} ({e})"
                return None
    return files


async def _run_test(runs: SandboxPool, checks: SandboxPool | None, files: dict[str, tuple[bytes, int]],
                    language: Language, test: TestCase, options: Options) -> Verdict:
    async with runs.acquire() as box:
        for name, (data, mode) in files.items():
            await box.write_file(name, data, mode)
        result = await box.run(language.run_argv(options.limits.memory), stdin=test.input.read_bytes(),
                               limits=options.limits)
    if result.status is not Status.OK:
        return _failed(test, result, language)
    answer = test.answer.read_bytes()
    if checks is None or options.checker is None:
        status, message = compare(result.stdout, answer)
        return Verdict(test.name, status, result, message)
    async with checks.acquire() as box:
        status, message, points = await check(box, test.input.read_bytes(), result.stdout, answer, options.checker)
    return Verdict(test.name, status, result, message, points)


def _failed(test: TestCase, result: Result, language: Language) -> Verdict:
    """A run that did not end OK: SG is RE (the signal in the message); a runtime's own out-of-memory is MLE."""
    if result.status in (Status.RE, Status.SG):
        oom = next((text for text in language.out_of_memory if text.encode() in result.stderr), None)
        if oom is not None:
            return Verdict(test.name, "MLE", result, f"the runtime ran out of memory ({oom!r} on stderr)")
        return Verdict(test.name, "RE", result, result.message)
    return Verdict(test.name, result.status.value, result)


def _progress(out: TextIO | None, verdict: Verdict) -> None:
    if out is not None:
        r = verdict.result
        print(f"  test {verdict.name}: {verdict.status} {r.cpu_time if r else 0:.3f}s "
              f"{r.memory_peak // 1024 if r else 0}KiB", file=out, flush=True)
