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
from dataclasses import dataclass
from typing import TextIO

import anyio

from ..api import Sandbox, run_interactive
from ..errors import BoxFileError, ConfigError, SandboxError
from ..pool import SandboxPool
from ..run.limits import Limits
from ..run.result import Result, Status
from .checking import (
    CHECKER_ENV,
    CHECKER_LIMITS,
    CHECKER_POLICY,
    JudgeProgram,
    check,
    compare,
    outcome,
    prepare,
    testlib_program,
    write_files,
)
from .languages import Language
from .problem import Validator
from .report import Report, Verdict
from .testcases import TestCase

COMPILE_LIMITS = Limits(cpu_time=60.0, wall_time=120.0, memory=None, pids=256, output=1 << 20)


def test_limits(language: Language, cpu: float, memory: int, output: int, wall: float | None = None,
                pids: int | None = None) -> Limits:
    """A test's run limits: wall time 3x the CPU time (at least +2 s) unless given, the stack as large as the
    memory limit (deep recursion), the language's process limit unless given."""
    return Limits(cpu_time=cpu, wall_time=wall or max(3 * cpu, cpu + 2), memory=memory, stack=memory,
                  pids=pids or language.processes, output=output)


@dataclass(frozen=True)
class Options:
    """How to judge, beyond the solution and its tests."""

    limits: Limits  # of each test's run
    checker: bytes | None = None  # testlib's: a host executable, run in a box of its own
    interactor: bytes | None = None  # testlib's, talking to the solution on its stdin and stdout
    validator: Validator | None = None  # a problem package's output validator, compiled first
    jobs: int | None = None  # tests run at once (default: one per CPU)
    stop_on_first_failure: bool = False
    progress: TextIO | None = None


async def judge(source: bytes, language: Language, tests: list[TestCase], options: Options) -> Report:
    report = Report(language.name)
    env = language.environment(options.limits.memory)
    program = await _judge_program(options)
    files = await _compile(source, language, env, report)
    if files is None:
        return report
    jobs = min(options.jobs or len(os.sched_getaffinity(0)), len(tests))
    verdicts: dict[int, Verdict] = {}
    first_failure = len(tests)
    scopes: dict[int, anyio.CancelScope] = {}
    async with contextlib.AsyncExitStack() as stack:
        runs = await stack.enter_async_context(SandboxPool(size=jobs, policy=language.run_policy, env=env))
        checks = None if program is None else await stack.enter_async_context(
            SandboxPool(size=jobs, policy=CHECKER_POLICY, env=CHECKER_ENV))
        slots = anyio.Semaphore(jobs)

        async def one(i: int, test: TestCase) -> None:
            nonlocal first_failure
            with scopes[i]:
                try:
                    verdict = await _run_test(runs, checks, program, files, language, test, options)
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

        async with anyio.create_task_group() as tasks:
            for i, test in enumerate(tests):
                await slots.acquire()  # in order: a later test starts only when a box is free
                if i > first_failure:
                    slots.release()
                    break
                scopes[i] = anyio.CancelScope()
                tasks.start_soon(one, i, test)
    last = first_failure if options.stop_on_first_failure else len(tests) - 1
    report.tests = [verdicts[i] for i in range(min(last + 1, len(tests)))]
    report.skipped = len(tests) - len(report.tests)
    return report


async def _judge_program(options: Options) -> JudgeProgram | None:
    if options.checker is not None:
        return testlib_program(options.checker, interactive=False)
    if options.interactor is not None:
        return testlib_program(options.interactor, interactive=True)
    v = options.validator
    if v is None:
        return None
    report = Report(v.language.name)
    artifacts = await _compile(v.source, v.language, v.language.environment(None), report)
    if artifacts is None:
        said = report.compile_error.strip().splitlines() or ["no reason given"]
        raise ConfigError(f"the problem's output validator does not compile: {said[-1][:200]}")
    return JudgeProgram(artifacts, tuple(v.language.run_argv(None)), "kattis", v.interactive, v.flags)


async def _compile(source: bytes, language: Language, env: dict[str, str],
                   report: Report) -> dict[str, tuple[bytes, int]] | None:
    """The files each test's box gets: the artifacts of a successful compile (the source itself for a language
    that has none), else None with the report's compile error set."""
    if language.compile is None:
        return {language.source: (source, 0o644)}
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


async def _run_test(runs: SandboxPool, checks: SandboxPool | None, program: JudgeProgram | None,
                    files: dict[str, tuple[bytes, int]], language: Language, test: TestCase,
                    options: Options) -> Verdict:
    if program is not None and program.interactive:
        assert checks is not None
        return await _interact(runs, checks, program, files, language, test, options)
    given = test.input.read_bytes()
    async with runs.acquire() as box:
        await write_files(box, files)
        result = await box.run(language.run_argv(options.limits.memory), stdin=given, limits=options.limits)
    if result.status is not Status.OK:
        return _failed(test, result, language)
    answer = test.answer.read_bytes()
    if checks is None or program is None:
        status, message = compare(result.stdout, answer)
        return Verdict(test.name, status, result, message)
    async with checks.acquire() as box:
        status, message, points = await check(box, program, given, result.stdout, answer)
    return Verdict(test.name, status, result, message, points)


async def _interact(runs: SandboxPool, checks: SandboxPool, program: JudgeProgram, files: dict[str, tuple[bytes, int]],
                    language: Language, test: TestCase, options: Options) -> Verdict:
    """The solution and the interactor (or interactive validator), each one's stdout the other's stdin.

    A limit the solution broke decides; then the judge's word (a WA stands even if the solution then died
    of the closed pipe); then the solution's own failure.
    """
    wall = (options.limits.wall_time or CHECKER_LIMITS.wall_time or 0) + 5
    async with runs.acquire() as box, checks.acquire() as judge_box:
        await write_files(box, files)
        await prepare(judge_box, program, test.input.read_bytes(), test.answer.read_bytes())
        result, judged = await run_interactive(box, language.run_argv(options.limits.memory), judge_box,
                                               program.command(), limits_a=options.limits,
                                               limits_b=CHECKER_LIMITS.replace(wall_time=wall))
        status, message, points = await outcome(judge_box, program, judged)
    if result.status in (Status.TLE, Status.WLE, Status.MLE, Status.OLE, Status.SV):
        return _failed(test, result, language)
    if status == "OK" and result.status is not Status.OK:
        return _failed(test, result, language)
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
