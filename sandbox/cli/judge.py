"""`sbx judge`: a solution against a directory of tests, from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..run.limits import parse_count, parse_seconds, parse_size


def build(judge: argparse.ArgumentParser) -> None:
    judge.add_argument("solution", metavar="SOLUTION", nargs="?")
    judge.add_argument("--tests", metavar="DIR", help="NAME.in with NAME.out (or NAME.ans)")
    judge.add_argument("--problem", metavar="DIR",
                       help="a Kattis/DOMjudge problem package: problem.yaml, data/sample, data/secret, "
                            "output_validators (its limits apply unless given here)")
    judge.add_argument("--lang", metavar="NAME", help="default: from the file extension (--list-languages)")
    judge.add_argument("--languages", metavar="FILE",
                       help="the language table (default: $XDG_CONFIG_HOME/sbx/languages.toml, else the shipped one)")
    judge.add_argument("--list-languages", action="store_true", help="the languages, with their toolchain versions")
    judge.add_argument("--time", metavar="S", help="CPU time limit per test (default: the problem's, else 1)")
    judge.add_argument("--wall-time", metavar="S", help="wall-clock limit per test (default: 3x --time, at least +2)")
    judge.add_argument("--memory", metavar="SIZE", help="memory limit per test (default: the problem's, else 256M)")
    judge.add_argument("--pids", metavar="N", help="processes and threads per test (default: the language's)")
    judge.add_argument("--output", metavar="SIZE", help="output per test (default: the problem's, else 64M)")
    judge.add_argument("--checker", metavar="PROG",
                       help="checker (testlib's convention): PROG INPUT OUTPUT ANSWER, exit 0 OK, 1 WA, 2 PE, "
                            "3 failure (IE), 7 partial points; it runs in a box of its own")
    judge.add_argument("--interactor", metavar="PROG",
                       help="interactor (testlib's convention): PROG INPUT OUTPUT, its stdin the solution's stdout "
                            "and its stdout the solution's stdin; exit 0 OK, 1 WA, 2 PE, 3 failure (IE)")
    judge.add_argument("--jobs", metavar="N", help="tests run at once (default: one per CPU)")
    judge.add_argument("--stop-on-first-failure", action="store_true",
                       help="no test after the first one that is not OK (in test order)")
    judge.add_argument("--json", action="store_true", help="print the report as one JSON object")
    judge.set_defaults(func=_cmd_judge)


def _cmd_judge(args: argparse.Namespace) -> int:
    from .. import judge as judging  # loaded only by this command
    from .. import stopping

    languages = judging.load_languages(args.languages)
    if args.list_languages:
        for lang in languages.values():
            print(f"{lang.name:<6} {lang.title:<28} {' '.join(lang.extensions):<16} {lang.toolchain_version()}")
        return 0
    if args.solution is None or (args.tests is None) == (args.problem is None):
        raise ConfigError("sbx judge: give SOLUTION and one of --tests DIR or --problem DIR (or --list-languages)")
    if args.checker and args.interactor:
        raise ConfigError("sbx judge: --checker and --interactor are two ways to judge; give one")
    solution = Path(args.solution)
    language = judging.detect_language(languages, solution, args.lang)
    problem = judging.read_problem(Path(args.problem), languages) if args.problem else None
    if problem is not None and problem.validator is not None and (args.checker or args.interactor):
        raise ConfigError(f"--problem {args.problem}: it has its own output validator; --checker and --interactor "
                          "do not apply")
    tests = problem.tests if problem is not None else judging.find_tests(Path(args.tests))
    cpu = parse_seconds(args.time, "--time") if args.time else (problem and problem.time_limit) or 1.0
    memory = parse_size(args.memory, "--memory") if args.memory else (problem and problem.memory) or 256 * 2**20
    output = parse_size(args.output, "--output") if args.output else (problem and problem.output) or 64 * 2**20
    limits = judging.test_limits(language, cpu, memory, output,
                                 wall=parse_seconds(args.wall_time, "--wall-time") if args.wall_time else None,
                                 pids=parse_count(args.pids, "--pids") if args.pids else None)
    jobs = parse_count(args.jobs, "--jobs") if args.jobs else None
    try:
        source = solution.read_bytes()
        checker = Path(args.checker).read_bytes() if args.checker else None
        interactor = Path(args.interactor).read_bytes() if args.interactor else None
    except OSError as e:
        raise ConfigError(f"{e.filename}: {e.strerror}") from None
    options = judging.Options(limits=limits, checker=checker, interactor=interactor,
                              validator=problem.validator if problem else None, jobs=jobs,
                              stop_on_first_failure=args.stop_on_first_failure, progress=sys.stderr)
    report = stopping.run(judging.judge, source, language, tests, options)
    print(json.dumps(report.record()) if args.json else judging.table(report.record()))
    return 0 if report.verdict == "OK" else 1
