"""The `sbx` command line (flags are a contract: see DESIGN.md).

Every failure of the sandbox itself is one line on stderr and exit status
125; a program that cannot be executed gets 126/127 as from a shell; else
the program's own status, or 128+N for signal N.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import trio

from . import doctor, policy_cli
from . import judge as judging
from .api import Relay, Sandbox
from .errors import ConfigError, SandboxError
from .limits import Limits, parse_count, parse_cpus, parse_seconds, parse_size
from .mounts import WORK_DIR, parse_bind, check_box_path
from .result import Result


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--env {text!r}: expected KEY=VALUE")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sbx", description="Run untrusted programs in a rootless sandbox.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one program in a fresh box")
    run.add_argument("--policy", default="default", metavar="NAME|FILE",
                     help="seccomp policy: a shipped name (sbx policy list) or a .toml file (default: default)")
    run.add_argument("--time", metavar="S", help="CPU time limit in seconds, summed over all processes")
    run.add_argument("--wall-time", metavar="S", help="wall-clock time limit in seconds")
    run.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 256M")
    run.add_argument("--pids", metavar="N", help="maximum number of processes and threads (default 64)")
    run.add_argument("--cpus", metavar="N", help="CPU bandwidth in cores, e.g. 0.5 (cgroup cpu.max; needs delegation)")
    run.add_argument("--output", metavar="SIZE", help="cap on stdout+stderr (default 64M); more is OLE")
    run.add_argument("--disk", metavar="SIZE", help="size of the writable /box, /tmp, /dev/shm (default 256M)")
    run.add_argument("--inodes", metavar="N", help="number of files in them (default 16384)")
    run.add_argument("--lower", action="append", default=[], metavar="DIR",
                     help="a read-only layer of the root (repeatable, top first): the layers are the whole root")
    run.add_argument("--fs", default="auto", metavar="fuse|kernel|auto",
                     help="the union of --lower layers: sbx-overlayfs (FUSE), kernel overlayfs, or FUSE when "
                          "/dev/fuse is usable (default)")
    run.add_argument("--upper", metavar="DIR", help="keep what the program wrote over the --lower layers here")
    run.add_argument("--bind", action="append", default=[], metavar="SRC[:DST]", help="writable bind mount")
    run.add_argument("--ro-bind", action="append", default=[], metavar="SRC[:DST]", help="read-only bind mount")
    run.add_argument("--tmpfs", action="append", default=[], metavar="DST", help="an empty writable tmpfs")
    run.add_argument("--cwd", default=WORK_DIR, metavar="DIR", help="working directory in the box (default /box)")
    run.add_argument("--env", action="append", default=[], metavar="K=V", help="environment variable")
    run.add_argument("--net", default="loopback", metavar="none|loopback", help="network (default loopback)")
    run.add_argument("--idmap", default="auto", metavar="auto|range|single",
                     help="uid mapping: subuid range (program has its own uid) or the caller's uid only")
    run.add_argument("--stdin", metavar="FILE", help="file to use as the program's stdin")
    run.add_argument("--json", metavar="FILE|-", help="write the result record as JSON")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROG [ARG...]")
    run.set_defaults(func=_cmd_run)

    judge = sub.add_parser("judge", help="compile a solution and run it on a directory of tests")
    judge.add_argument("solution", metavar="SOLUTION")
    judge.add_argument("--tests", required=True, metavar="DIR", help="NAME.in with NAME.out (or NAME.ans)")
    judge.add_argument("--lang", metavar="c|cpp|py", help="default: from the file extension")
    judge.add_argument("--time", default="1", metavar="S", help="CPU time limit per test (default 1)")
    judge.add_argument("--memory", default="256M", metavar="SIZE", help="memory limit per test (default 256M)")
    judge.add_argument("--checker", metavar="PROG", help="checker executable: PROG INPUT OUTPUT ANSWER, exit 0 = OK")
    judge.add_argument("--json", action="store_true", help="print the report as one JSON object")
    judge.set_defaults(func=_cmd_judge)

    policy = sub.add_parser("policy", help="the seccomp policies")
    psub = policy.add_subparsers(dest="policy_command", required=True, parser_class=_Parser)
    psub.add_parser("list", help="the shipped policies").set_defaults(func=lambda a: _print(policy_cli.list_policies()))
    show = psub.add_parser("show", help="what a policy allows and blocks")
    show.add_argument("name", metavar="NAME|FILE")
    show.set_defaults(func=lambda a: _print(policy_cli.show_policy(a.name)))
    pcheck = psub.add_parser("check", help="validate a policy file")
    pcheck.add_argument("file", metavar="FILE")
    pcheck.set_defaults(func=lambda a: _print(policy_cli.check_policy(a.file)))

    check = sub.add_parser("check", help="what this machine supports and what sbx will use")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_cmd_check)
    return parser


def _limits(args: argparse.Namespace) -> Limits:
    defaults = Limits()
    return Limits(
        cpu_time=parse_seconds(args.time, "--time") if args.time else None,
        wall_time=parse_seconds(args.wall_time, "--wall-time") if args.wall_time else None,
        memory=parse_size(args.memory, "--memory") if args.memory else None,
        pids=parse_count(args.pids, "--pids") if args.pids else defaults.pids,
        output=parse_size(args.output, "--output") if args.output else defaults.output,
        cpus=parse_cpus(args.cpus) if args.cpus else None,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    argv = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not argv:
        raise ConfigError("run: no program given (usage: sbx run [OPTIONS] -- PROG [ARG...])")
    if argv[0].startswith("-"):
        raise ConfigError(f"run: unrecognized option {argv[0]!r}")
    limits = _limits(args)
    binds = [parse_bind(b, True) for b in args.bind] + [parse_bind(b, False) for b in args.ro_bind]
    sandbox = Sandbox(
        limits=limits,
        binds=binds,
        tmpfs=args.tmpfs,
        disk=parse_size(args.disk, "--disk") if args.disk else Sandbox.DEFAULT_DISK,
        inodes=parse_count(args.inodes, "--inodes") if args.inodes else Sandbox.DEFAULT_INODES,
        net=args.net,
        idmap=args.idmap,
        env=dict(_env_pair(e) for e in args.env),
        cwd=check_box_path(args.cwd, "--cwd") if args.cwd != WORK_DIR else WORK_DIR,
        policy=args.policy,
        lowers=args.lower,
        upper=args.upper,
        fs=args.fs,
    )
    stdin = _open_stdin(args.stdin)
    try:
        result = trio.run(_run_once, sandbox, argv, stdin)
    finally:
        os.close(stdin)
    if args.json:
        _write_json(args.json, result)
    return result.shell_status


def _open_stdin(path: str | None) -> int:
    if path is None:
        return os.dup(0) if _fd_open(0) else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(f"--stdin {path}: {e.strerror}") from None


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def _run_once(sandbox: Sandbox, argv: Sequence[str], stdin: int) -> Result:
    async with sandbox:
        return await sandbox.run(argv, stdin=stdin, stdout=Relay(1), stderr=Relay(2))


def _write_json(target: str, result: Result) -> None:
    text = result.to_json() + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        with open(target, "w") as f:
            f.write(text)
    except OSError as e:
        raise ConfigError(f"--json {target}: {e.strerror}") from None


def _cmd_judge(args: argparse.Namespace) -> int:
    solution = Path(args.solution)
    lang = judging.detect_lang(solution, args.lang)
    tests = judging.find_tests(Path(args.tests))
    cpu = parse_seconds(args.time, "--time")
    limits = Limits(cpu_time=cpu, wall_time=max(3 * cpu, cpu + 2), memory=parse_size(args.memory, "--memory"),
                    pids=1, output=64 * 2**20)
    report = trio.run(lambda: judging.judge(solution, tests, lang=lang, limits=limits,
                                            checker=Path(args.checker) if args.checker else None,
                                            progress=sys.stderr))
    print(json.dumps(report.record()) if args.json else judging.table(report))
    return 0 if report.verdict == "OK" else 1


def _print(text: str) -> int:
    print(text)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    report = doctor.report()
    print(json.dumps(report, indent=2) if args.json else doctor.table(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except SandboxError as e:
        print(f"sbx: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
