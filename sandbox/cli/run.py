"""`sbx run`: one program in a new box, with copies in and out, as the command line gives it.

Loaded only when the command is `run`.  A run with no copies and no FUSE
union goes the one-shot way (oneshot.py), which loads no event loop; the
others go through the API (a `Sandbox` on asyncio).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import sys
import termios
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .. import hostpath, oneshot
from ..box.files import writable_dirs
from ..box.layout import WORK_DIR, Bind, parse_bind
from ..box.plan import describe
from ..budget import Budget
from ..errors import BoxFileError, ConfigError, ExecError, SandboxError
from ..run.limits import Limits, parse_count, parse_cpus, parse_seconds, parse_size
from ..run.relay import Relay
from ..run.result import Result, Status
from ..spec import Spec

if TYPE_CHECKING:
    from .. import copies
    from ..api import Sandbox

T = TypeVar("T")


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--env {text!r}: expected KEY=VALUE")
    return key, value


def _unless_none(text: str | None, parse: Callable[[str, str], T], what: str, default: T | None) -> T | None:
    """An option that has a default: absent gives it, `none` lifts the limit."""
    if text is None:
        return default
    return None if text == "none" else parse(text, what)


def _limits(args: argparse.Namespace) -> Limits:
    defaults = Limits()
    return Limits(
        cpu_time=parse_seconds(args.time, "--time") if args.time else None,
        wall_time=_unless_none(args.wall_time, parse_seconds, "--wall-time", defaults.wall_time),
        memory=_unless_none(args.memory, parse_size, "--memory", defaults.memory),
        pids=parse_count(args.pids, "--pids") if args.pids else defaults.pids,
        output=parse_size(args.output, "--output") if args.output else defaults.output,
        cpus=parse_cpus(args.cpus) if args.cpus else None,
    )


def command(args: argparse.Namespace) -> int:
    argv = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not argv and not args.image:
        raise ConfigError("run: no program given (usage: sbx run [OPTIONS] -- PROG [ARG...])")
    if argv and argv[0].startswith("-"):
        raise ConfigError(f"run: unrecognized option {argv[0]!r}")
    binds = [parse_bind(b, True) for b in args.bind] + [parse_bind(b, False) for b in args.ro_bind]
    disk = parse_size(args.disk, "--disk") if args.disk else Spec.DEFAULT_DISK
    inodes = parse_count(args.inodes, "--inodes") if args.inodes else Spec.DEFAULT_INODES
    config: dict[str, Any] = dict(
        limits=_limits(args), binds=binds, tmpfs=args.tmpfs, disk=disk, inodes=inodes, net=args.net,
        idmap=args.idmap, env=dict(_env_pair(e) for e in args.env), cwd=args.cwd, policy=args.policy,
        lowers=args.lower, upper=args.upper, fs=args.fs, image=args.image, commit=args.commit)
    sandbox = Spec(**config)
    if args.dry_run:
        lines = describe(sandbox.plan())
        print("\n".join([*lines, f"{len(lines) + 1:2}. run {shlex.join(sandbox.command(argv))} under "
                                   f"{'no policy' if sandbox.policy is None else 'policy ' + sandbox.policy}"]))
        return 0
    one_shot = oneshot.eligible(sandbox, bool(args.copy_in or args.copy_out))
    if not one_shot:
        from ..api import Sandbox
        sandbox = Sandbox(**config)
    guard = sandbox.writable_dirs
    plan = _Plan(argv, args.quiet, binds, [], [], disk, inodes, stdout=Relay(2 if args.json == "-" else 1))
    with contextlib.ExitStack() as held:
        if args.copy_in or args.copy_out:
            from .. import copies
        for spec in args.copy_in:
            plan.copy_in.append(copies.parse_copy_in(spec, guard))
            held.enter_context(plan.copy_in[-1].host)
        for spec in args.copy_out:
            plan.copy_out.append(copies.parse_copy_out(spec, guard))
            held.enter_context(plan.copy_out[-1].host)
        record = held.enter_context(hostpath.OutputFile(args.json, "--json", guard)) \
            if args.json and args.json != "-" else None
        stdin = _open_stdin(args.stdin, guard)
        held.callback(os.close, stdin)
        try:
            with _terminal_kept(stdin):
                if one_shot:
                    outcome = _one_shot(sandbox, plan, stdin)
                else:
                    from .. import stopping
                    outcome = stopping.run(_session, sandbox, plan, stdin)
        except SandboxError as e:
            if args.json:  # the run was attempted, but its box could not be set up
                _write_json(record, Result.not_run(Status.IE, None, str(e)))
            raise
        if outcome.lines and not all(r.ends_line for r in (plan.stdout, plan.stderr) if r.fd == 2):
            # the program's last line on our stderr is not ours to finish
            print(file=sys.stderr)
        if sandbox.committed is not None:
            outcome.lines.append(f"committed {sandbox.committed.ref} {sandbox.committed.digest}")
        for line in outcome.lines:
            print(f"sbx: {line}", file=sys.stderr)
        if args.json:
            _write_json(record, outcome.result)
    return outcome.exit_status


@dataclass(frozen=True)
class _Plan:
    """What `sbx run` does with its box, checked before the box is built."""

    argv: list[str]
    quiet: bool
    binds: list[Bind]
    copy_in: list[copies.Copy]
    copy_out: list[copies.Copy]
    disk: int
    inodes: int
    # With --json -, sbx's stdout carries the record alone: the program's stdout goes to stderr, so that
    # nothing the program prints can pass for the record or spoil it.
    stdout: Relay = field(default_factory=lambda: Relay(1))
    stderr: Relay = field(default_factory=lambda: Relay(2))  # the program's stderr, relayed to ours


@dataclass
class _Outcome:
    """How `sbx run` ends: the record, the exit status, and the lines to say after the program's output."""

    result: Result
    exit_status: int
    lines: list[str] = field(default_factory=list)


def _one_shot(spec: Spec, plan: _Plan, stdin: int) -> _Outcome:
    """The box's whole life, with no copies and no event loop (oneshot.py)."""
    try:
        ran: Result | ExecError = oneshot.run_once(spec, plan.argv, stdin, plan.stdout, plan.stderr)
    except ExecError as e:
        ran = e
    return _ran(plan, spec, [], ran)


async def _session(sandbox: Sandbox, plan: _Plan, stdin: int) -> _Outcome:
    """The box's whole life: copy in, run, copy out (also after a failed run or one that never started)."""
    from .. import copies
    async with sandbox:
        notes = []
        for c in plan.copy_in:
            left_out = await copies.copy_in(sandbox, c)
            if left_out and not plan.quiet:
                notes.append(f"--copy-in {c.src}: {copies.left_out(left_out)}")
        try:
            ran: Result | ExecError = await sandbox.run(plan.argv, stdin=stdin, stdout=plan.stdout,
                                                        stderr=plan.stderr)
        except ExecError as e:
            ran = e
        outcome = _ran(plan, sandbox, notes, ran)
        # all copies out together bring back at most what the box could hold: a program fills no host disk
        # with a sparse file, or with an --upper that no --disk caps
        budget = Budget(plan.disk, plan.inodes)
        for c in plan.copy_out:
            try:
                left_out = await copies.copy_out(sandbox, c, budget)
            except BoxFileError as e:
                outcome.lines.append(f"--copy-out {e}")
                outcome.exit_status = outcome.exit_status or BoxFileError.exit_status
                continue
            if left_out and not plan.quiet:
                outcome.lines.append(f"--copy-out {c.src}: {copies.left_out(left_out)}")
    return outcome


def _ran(plan: _Plan, sandbox: Spec, notes: list[str], ran: Result | ExecError) -> _Outcome:
    """What to say and exit with after the run, or after a program that could not be executed."""
    if isinstance(ran, ExecError):
        said = _not_found(plan, sandbox, str(ran)) if ran.errno == errno.ENOENT and not plan.quiet else [str(ran)]
        return _Outcome(Result.not_run(Status.RE, ran.exit_status, str(ran)), ran.exit_status, notes + said)
    outcome = _Outcome(ran, ran.shell_status, notes)
    if ran.status is not Status.OK and not plan.quiet:
        outcome.lines.append(ran.summary)
    return outcome


def _brought_in(plan: _Plan, in_box: str) -> bool:
    """Whether a bind or a copy put a host file at `in_box`: then what is missing is e.g. its ELF interpreter."""
    given = [(b.src, b.dst) for b in plan.binds] + \
        [(c.src, os.path.normpath(os.path.join(WORK_DIR, c.dst))) for c in plan.copy_in]
    return any((in_box == dst or in_box.startswith(dst + "/"))
               and os.path.lexists(os.path.normpath(os.path.join(src, os.path.relpath(in_box, dst))))
               for src, dst in given)


_BOX_HAS_ONLY = ("the box has only the host's /usr, /bin, /sbin, /lib* and parts of /etc; /box, /tmp and /dev/shm "
                 "start empty (add files with --ro-bind or --copy-in)")


def _not_found(plan: _Plan, sandbox: Spec, error: str) -> list[str]:
    """What to say when PROG is not in the box: how to bring it in, if it is a host file the caller named."""
    prog = sandbox.command(plan.argv)[0]
    in_box = os.path.normpath(os.path.join(sandbox.cwd, prog))
    if sandbox.image is not None:
        return [error]
    if "/" not in prog or not os.path.isfile(prog) or _brought_in(plan, in_box):
        return [error, _BOX_HAS_ONLY]
    hint = f"{prog}: not found in the box; it exists on the host: bind it in with --ro-bind " + \
        (prog if os.path.isabs(prog) else f"{prog}:{in_box}")
    root, name = os.path.split(in_box)
    if root in writable_dirs():  # (a copy cannot make directories on the way)
        hint += f" (or --copy-in {prog}:{name if root == WORK_DIR else in_box})"
    return [hint]


@contextlib.contextmanager
def _terminal_kept(fd: int) -> Iterator[None]:
    """A terminal handed over as stdin gets its settings back: a program could turn off echo for good."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:  # not a terminal
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, saved)


def _open_stdin(path: str | None, guard: hostpath.Guard) -> int:
    if path is None:
        return os.dup(0) if _fd_open(0) else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    with hostpath.resolve(path, "--stdin", guard) as found:
        try:
            return found.reopen(os.O_RDONLY)
        except OSError as e:
            raise ConfigError(f"--stdin {path}: {e.strerror}") from None


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _write_json(target: hostpath.OutputFile | None, result: Result) -> None:
    """The record, to --json's file (None: stdout, for --json -)."""
    text = result.to_json() + "\n"
    if target is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target.write(text.encode())
