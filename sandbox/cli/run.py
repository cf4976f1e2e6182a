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
import sys
import termios
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .. import hostpath, oneshot
from ..box.files import writable_dirs
from ..box.layout import MAX_SECRET, WORK_DIR, Bind, VolumeMount, parse_bind, parse_volume
from ..box.plan import describe
from ..budget import Budget
from ..errors import BoxFileError, ConfigError, ExecError, SandboxError
from ..record import Record, field
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


def read_secret(spec: str, guard: hostpath.Guard) -> tuple[str, bytes]:
    """`id=NAME,src=FILE` (docker's and buildah's syntax; `source=` too) or `id=NAME,env=VAR`: the name and value."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key in fields or key not in ("id", "src", "source", "env", "type"):
            raise ConfigError(f"--secret {spec!r}: expected id=NAME,src=FILE or id=NAME,env=VAR")
        fields[key] = value
    name, src, env = fields.get("id"), fields.get("src", fields.get("source")), fields.get("env")
    if not name or (src is None) == (env is None) or fields.get("type", "file") != "file":
        raise ConfigError(f"--secret {spec!r}: expected id=NAME,src=FILE or id=NAME,env=VAR")
    if env is not None:
        if env not in os.environ:
            raise ConfigError(f"--secret id={name}: ${env} is not set")
        return name, os.fsencode(os.environ[env])
    assert src is not None
    with hostpath.resolve(src, f"--secret id={name}", guard) as found:
        try:  # (blocking: a FIFO, as `src=<(pass show token)` gives, is read to its end)
            fd = found.reopen(os.O_RDONLY)
        except OSError as e:
            raise ConfigError(f"--secret id={name}: {src}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            return name, f.read(MAX_SECRET + 1)  # (Spec refuses one past MAX_SECRET)
    except OSError as e:
        raise ConfigError(f"--secret id={name}: {src}: {e.strerror}") from None


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


def build(run: argparse.ArgumentParser) -> None:
    """The `run` command's options (main.py builds only the invoked command's parser)."""
    run.description = (
        "Run PROG in a fresh box. The box sees only the host's /usr, /bin, /sbin, /lib* and the parts "
        "of /etc a toolchain needs; /box (the working directory), /tmp and /dev/shm start empty. "
        "Give it more with --ro-bind, --bind or --copy-in.")
    run.epilog = (
        "Exit status: the program's own, 128+N when it was killed by signal N, 126/127 when it is not "
        "executable / not found, 125 when the sandbox could not be set up, a --copy-in failed, or a "
        "--copy-out failed after a run that exited 0, 128+N when sbx itself got SIGINT or SIGTERM (the run "
        "is ended and its box removed first). A run that does not end OK is explained in one line "
        "on stderr after the program's own output (sbx: TLE: 1.00 s of CPU time, limit 1 s).")
    run.add_argument("--policy", default="default", metavar="NAME|FILE",
                     help="seccomp policy: a shipped name (sbx policy list) or a .toml file (default: default)")
    run.add_argument("--time", metavar="S",
                     help="CPU time limit in seconds, summed over every process and thread (default: none, "
                          "--wall-time bounds it)")
    run.add_argument("--wall-time", metavar="S", help="wall-clock time limit in seconds (default 600; none lifts it)")
    run.add_argument("--memory", metavar="SIZE",
                     help="memory limit of the whole run, e.g. 256M (default 1G; none lifts it): the cgroup's "
                          "memory.max when one is delegated, else resident memory sampled by the spawner "
                          "(sbx check says which)")
    run.add_argument("--pids", metavar="N", help="maximum number of processes and threads (default 64)")
    run.add_argument("--cpus", metavar="N", help="CPU bandwidth in cores, e.g. 0.5 (cgroup cpu.max; needs delegation)")
    run.add_argument("--output", metavar="SIZE", help="cap on stdout+stderr (default 64M); more is OLE")
    run.add_argument("--disk", metavar="SIZE",
                     help="size of the writable /box, /tmp, /dev/shm together (default 256M); also the most "
                          "that all --copy-out copies together may bring back")
    run.add_argument("--inodes", metavar="N",
                     help="number of files in them (default 16384); also the most files --copy-out may bring back")
    run.add_argument("--image", metavar="NAME[:TAG]",
                     help="an image of the store (sbx image ls): its layers are the root, its Env, WorkingDir and "
                          "Entrypoint apply, and its Cmd when no PROG is given")
    run.add_argument("--dry-run", action="store_true",
                     help="print the steps that would build the box, one a line, and build nothing")
    run.add_argument("--commit", metavar="NEW[:TAG]",
                     help="with --image (and --fs fuse): after the run, the image plus what the program wrote, "
                          "deletions included, as a new image of the store")
    run.add_argument("--lower", action="append", default=[], metavar="DIR",
                     help="a read-only layer of the root (repeatable, top first): the layers are the whole root, "
                          "instead of the host's system dirs")
    run.add_argument("--fs", default="auto", metavar="fuse|kernel|auto",
                     help="the union of --lower layers: sbx-overlayfs (FUSE), kernel overlayfs, or (auto, the "
                          "default) kernel unless the run needs FUSE: --upper, --commit, or, without a subordinate "
                          "id range, an image with files of the program's uid or gid (with one, the kernel union "
                          "shows in-image owners too). kernel refuses --upper: it would write straight into the host "
                          "dir, where --disk and --inodes cannot hold")
    run.add_argument("--upper", metavar="DIR",
                     help="keep what the program wrote over the --lower layers here, at most --disk bytes and "
                          "--inodes names (--fs fuse only)")
    run.add_argument("--bind", action="append", default=[], metavar="SRC[:DST]",
                     help="writable bind mount of a host path (repeatable; DST defaults to SRC); with a subuid "
                          "range the program writes as its own uid, so SRC must be writable by others")
    run.add_argument("--ro-bind", action="append", default=[], metavar="SRC[:DST]",
                     help="read-only bind mount of a host path (repeatable; DST defaults to SRC); with a subuid "
                          "range SRC must be readable by others")
    run.add_argument("-v", "--volume", action="append", default=[], metavar="NAME:DST[:ro]",
                     help="the named volume NAME at DST, kept between runs (made on first use, capped; see sbx "
                          "volume); one writer at a time, any number with :ro. A SRC that is a path is a --bind")
    run.add_argument("--tmpfs", action="append", default=[], metavar="DST",
                     help="an empty writable tmpfs at DST (repeatable; each up to --disk and --inodes)")
    run.add_argument("--copy-in", action="append", default=[], metavar="SRC:DST",
                     help="copy the host file or directory SRC to DST in the box before the run (repeatable). "
                          "DST is relative to /box or absolute under /box, /tmp or /dev/shm (a directory may go "
                          "to /box itself: DST .); directories on the way are made. The copies are the "
                          "program's, mode 644, or 755 if executable. Of a directory's tree, regular files and "
                          "directories are copied, symlinks and special files left out (never followed), and "
                          "empty directories not made.")
    run.add_argument("--copy-out", action="append", default=[], metavar="SRC:DST",
                     help="after the run, even a failed one, copy the box file or directory SRC (a path as for "
                          "--copy-in's DST; . is all of /box) to the host path DST, or into DST if it is a "
                          "directory (repeatable). Of a tree, regular files and directories are copied, symlinks "
                          "and special files left out (never followed); an existing host directory is merged "
                          "into. The copies are yours, mode 644, or 755 if executable, less your umask. A file "
                          "already at the destination is replaced, never written through a symlink; a symlink "
                          "where a directory goes is refused. At most --disk bytes and --inodes files in all. (A "
                          "directory of a --fs fuse union cannot be copied out, only its files.)")
    run.add_argument("--cwd", metavar="DIR", help="working directory in the box (default /box, or the image's "
                                                  "WorkingDir)")
    run.add_argument("--env", action="append", default=[], metavar="K=V",
                     help="environment variable (repeatable; the program gets only PATH, HOME and LANG besides)")
    run.add_argument("--net", default="loopback", metavar="none|loopback|pasta|slirp4netns|box:NAME",
                     help="network (default loopback): pasta (or slirp4netns where pasta is missing) gives outbound "
                          "TCP/UDP and DNS through a user-mode stack on the host; the host's own loopback stays out "
                          "of reach; box:NAME shares the running detached box NAME's network, as a pod")
    run.add_argument("--network", metavar="NAME",
                     help="join the network NAME (sbx network create): its boxes share its loopback and reach "
                          "each other's detached boxes by name")
    run.add_argument("--host-loopback", action="store_true",
                     help="with --net pasta or slirp4netns: the host's 127.0.0.1 is reachable as "
                          "host.containers.internal")
    run.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOSTPORT:BOXPORT[/tcp|udp]",
                     help="with --net pasta or slirp4netns: a box port on the host, on 127.0.0.1 unless IP is given "
                          "(repeatable)")
    run.add_argument("-u", "--user", metavar="0|1000",
                     help="0 (or root): the program is root of the box, in a user namespace of its own that has no "
                          "power over the sandbox (needs a subuid range; an image's User root does the same). "
                          "Default: uid 1000")
    run.add_argument("--idmap", default="auto", metavar="auto|range|single",
                     help="uid mapping: subuid range (program has its own uid) or the caller's uid only")
    run.add_argument("--stdin", metavar="FILE", help="file to use as the program's stdin (default: sbx's own)")
    run.add_argument("--secret", action="append", default=[], metavar="id=NAME,src=FILE|env=VAR",
                     help="a secret at /run/secrets/NAME (read-only, the program's alone, on a tmpfs of its own: "
                          "never in an upper or a commit), from a host file or sbx's environment; its value is "
                          "masked as *** in the program's output, the record and the messages (repeatable)")
    run.add_argument("-d", "--detach", action="store_true",
                     help="run in the background, watched by a monitor process of its own (see sbx ps, logs, "
                          "stop, rm); the program has no wall-time limit unless --wall-time gives one")
    run.add_argument("--name", metavar="NAME", help="with -d: the box's name (default: one made up)")
    run.add_argument("--json", metavar="FILE|-",
                     help="write the result record as JSON, for every run attempted (also one whose program "
                          "could not be started or whose box could not be set up); with -, stdout carries the "
                          "record alone and the program's stdout goes to stderr")
    run.add_argument("--quiet", action="store_true",
                     help="do not say why a run did not end OK, nor give hints (errors are still said)")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROG [ARG...]",
                     help="the program: a path in the box, or a name looked up in /usr/local/bin, /usr/bin, /bin")
    run.set_defaults(func=command)


def configure(args: argparse.Namespace) -> tuple[list[str], dict[str, Any], Spec]:
    """The program, the sandbox's configuration (Spec's keywords) and the Spec, checked, secrets read."""
    separated = args.program[:1] == ["--"]
    argv = args.program[1:] if separated else args.program
    if not argv and not args.image:
        raise ConfigError("run: no program given (usage: sbx run [OPTIONS] -- PROG [ARG...])")
    if argv and argv[0].startswith("-") and not separated:  # (after --, an image's Entrypoint may take it)
        raise ConfigError(f"run: unrecognized option {argv[0]!r}")
    binds = [parse_bind(b, True) for b in args.bind] + [parse_bind(b, False) for b in args.ro_bind]
    volumes: list[VolumeMount] = []
    for spec in args.volume:
        parsed = parse_volume(spec)
        if isinstance(parsed, Bind):
            binds.append(parsed)
        else:
            volumes.append(parsed)
    disk = parse_size(args.disk, "--disk") if args.disk else Spec.DEFAULT_DISK
    inodes = parse_count(args.inodes, "--inodes") if args.inodes else Spec.DEFAULT_INODES
    config: dict[str, Any] = dict(
        limits=_limits(args), binds=binds, tmpfs=args.tmpfs, disk=disk, inodes=inodes, net=args.net,
        idmap=args.idmap, env=dict(_env_pair(e) for e in args.env), cwd=args.cwd, policy=args.policy,
        lowers=args.lower, upper=args.upper, fs=args.fs, image=args.image, commit=args.commit,
        host_loopback=args.host_loopback, publish=args.publish, volumes=volumes, user=args.user,
        network=args.network)
    sandbox = Spec(**config)
    if args.secret:  # read as the caller, so through the box-writable dirs' guard, known once the binds are
        config["secrets"] = dict(read_secret(s, sandbox.writable_dirs) for s in args.secret)
        sandbox = Spec(**config)
    return argv, config, sandbox


def command(args: argparse.Namespace) -> int:
    if args.name and not args.detach:
        raise ConfigError("--name names a detached box: give -d too")
    if args.detach:
        from ..living import detach
        return detach.command(args)
    argv, config, sandbox = configure(args)
    binds, disk, inodes = config["binds"], config["disk"], config["inodes"]
    if args.dry_run:
        import shlex
        lines = describe(sandbox.plan())
        print("\n".join([*lines, f"{len(lines) + 1:2}. run {shlex.join(sandbox.command(argv))} under "
                                   f"{'no policy' if sandbox.policy is None else 'policy ' + sandbox.policy}"]))
        return 0
    one_shot = oneshot.eligible(sandbox, bool(args.copy_in or args.copy_out))
    if sandbox.needs_daemon:  # its boot overlaps the API's imports and the box's build
        from ..box.union_daemon import ForkServer
        ForkServer.prime()
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


class _Plan(Record):
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


class _Outcome(Record, frozen=False):
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
