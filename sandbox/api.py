"""The async API: a `Sandbox` is built once and then runs any number of programs.

Its configuration is checked in spec.py, which loads no event loop; the
judge, the service and `sbx run --copy-in/--copy-out` (or with a FUSE
union) run through this module.
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from . import scratch, teardown
from .box import plan
from .box.cgroups import delegation
from .box.files import locate
from .box.run_protocol import MAX_PROGRAM_FDS, RunEnd, RunRequest, StartFailure
from .box.supervisor import Box
from .errors import BoxFileError, ConfigError, SetupError, single_error
from .run.limits import Limits
from .run.mask import Mask
from .run.output import Output, input_fd
from .run.relay import Relay, program_pipe, write_all
from .run.result import Result
from .run.tap import Tap, relay, tapped_pipe
from .run.verdict import enforcement, verdict
from .spec import INHERIT, NEVER_RAN, Inherit, Spec, exec_failure
from .teardown import TeardownWarning
from .upper import leave_out_mount_points, lock_upper


class Sandbox(Spec):
    """A prepared box; `run()` starts programs in it, all sharing its /box and /tmp.

    Its configuration, checked when it is made, is `Spec`'s (spec.py); this
    class adds the box's lifecycle (`async with`), file requests and runs.
    """

    _box: Box | None = None
    _union_upper: str | None = None
    _captured: tuple[int, int] | None = None

    async def __aenter__(self) -> Sandbox:
        upper, workdir = self._upper, None
        try:
            self.pin()
            if upper is not None:
                self._locks += lock_upper(upper)  # one writer per upper, until the box and its daemon are gone
                # the union needs a scratch dir on the upper's filesystem, beside it and not inside it
                try:
                    workdir = self._scratch(os.path.dirname(upper), f".sbx-work-{os.path.basename(upper)}-")
                except OSError as e:
                    raise ConfigError(f"--upper {upper}: cannot make the union's work dir beside it: "
                                      f"{e.strerror}") from None
            elif self._lowers and self.fs == "fuse":
                # the daemon lives outside the box, so its default upper is a host dir removed on close
                union = self._scratch(tempfile.gettempdir(), "sbx-union-")
                upper, workdir = f"{union}/upper", f"{union}/work"
                os.mkdir(upper)
                os.mkdir(workdir)
            layout = self._layout(upper, workdir)
            self._union_upper = upper
            found = await anyio.to_thread.run_sync(delegation)  # once per process; it may ask systemd for a scope
            self._box = Box(layout, self.ids, found, daemon_holds=tuple(self._locks), join=self.join,
                            network=self.network_holder)
            if self.policy is None:
                await self._box.start()
            else:  # the filter the runs will need, compiled in a thread while the box is built
                with single_error():
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(self._box.start)
                        unmapped = found.base is not None or self.limits.memory is None
                        await anyio.to_thread.run_sync(functools.partial(self._filter, self.policy, unmapped))
        except BaseException:
            self._box = None
            self._remove_workdir()
            raise
        return self

    def _scratch(self, parent: str, prefix: str) -> str:
        """A host dir this sandbox makes, locks and removes on close; only that very dir is removed (see teardown).

        Its lock is held like the upper's, by this sandbox and the daemon (see scratch.py).
        """
        path, lock = scratch.make(parent, prefix)
        self._locks.append(lock)
        self._host_dirs[path] = teardown.identity(path)
        return path

    def _remove_workdir(self) -> None:
        """Remove the host dirs the union used (the program wrote them), then release the upper.

        Runs whatever happened before, and raises nothing: what could not be
        removed is said in a `TeardownWarning`, so that a run's result is
        never lost to its cleanup.
        """
        try:
            for path, made in list(self._host_dirs.items()):
                left = teardown.remove_tree(path, made)
                del self._host_dirs[path]
                if left:
                    warnings.warn(TeardownWarning(f"could not remove all of {path}: {'; '.join(left)}"),
                                  stacklevel=2)
        finally:
            self.release()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _capture_files(self) -> tuple[int, int]:
        """The memfds the spawner copies captured stdout and stderr into: one pair per sandbox, emptied per run."""
        if self._captured is None:
            self._captured = (os.memfd_create("sbx-stdout", os.MFD_CLOEXEC),
                              os.memfd_create("sbx-stderr", os.MFD_CLOEXEC))
        return self._captured

    async def aclose(self) -> None:
        """Close the box, then remove the host dirs of its union and release its upper, each whatever happened
        before; what could not be released is a `TeardownWarning`, not an exception."""
        try:
            self.close_filters()
            for fd in self._captured or ():
                os.close(fd)
            self._captured = None
            if self._box is not None:
                box, self._box = self._box, None
                try:
                    await box.aclose()
                except Exception as e:  # noqa: BLE001 - said, never raised: it would lose the caller's results
                    warnings.warn(TeardownWarning(f"closing the box failed: {e}"), stacklevel=2)
                if self._commit is not None and self.image is not None and self._union_upper is not None:
                    # the daemon is gone: the upper holds all it will; and it is removed right after
                    leave_out_mount_points(self._union_upper, plan.mount_points(plan.make(box.layout, box.ids)))
                    self.committed = await anyio.to_thread.run_sync(self._store.commit, self.image,
                                                                    self._union_upper, self._commit)
        finally:
            self._remove_workdir()  # after the box and its daemon are gone, whatever happened before

    @property
    def box_pid(self) -> int:
        """The box's outer process, whose namespaces are the box's (what `join` takes); 0 without a box."""
        return self._box.pid if self._box is not None else 0

    def usage(self) -> tuple[float, int]:
        """CPU seconds and memory bytes the box's processes use so far (box/usage.py); (0, 0) without a box."""
        from .box.usage import sample
        box = self._box
        if box is None:
            return 0.0, 0
        return sample(box.cgroup.path if box.cgroup is not None else None, box.pid)

    async def signal(self, signum: int) -> None:
        """Send `signum` to the running program's first process (as `docker stop` sends SIGTERM); nothing between
        runs.  Ending the run is the program's to do: cancel the run to kill it."""
        if self._box is not None:
            await self._box.signal_run(signum)

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Create or replace a file in /box, /tmp or /dev/shm (relative paths are in /box), owned by the program.

        Directories missing on the way are made (the program's too).
        """
        fd = os.memfd_create("sbx-write", os.MFD_CLOEXEC)
        try:
            write_all(fd, data)
            await self.copy_in(path, fd, mode)
        except BoxFileError as e:
            raise BoxFileError(f"write_file {e}") from None
        finally:
            os.close(fd)

    async def copy_in(self, path: str, source: int, mode: int = 0o644) -> None:
        """Like `write_file`, from the regular file open as `source` (from its start; left open).

        Box init copies it straight from the fd, so a large file never passes
        through this process.
        """
        reply, _ = await self._open_box().file_op(["write", *self._beneath(path), f"{mode:o}"], [os.dup(source)])
        if "error" in reply:
            raise BoxFileError(reply["error"])

    async def symlink(self, path: str, target: str) -> None:
        """Make a symlink at `path` (in /box, /tmp or /dev/shm, as `write_file`) pointing to `target`, which
        is not checked: only the program follows it."""
        if "\0" in target or not target:
            raise BoxFileError(f"symlink {path}: the target must be a non-empty path without NUL bytes")
        try:
            where = self._beneath(path)
        except BoxFileError as e:
            raise BoxFileError(f"symlink {e}") from None
        reply, _ = await self._open_box().file_op(["symlink", *where, target], [])
        if "error" in reply:
            raise BoxFileError(f"symlink {reply['error']}")

    async def open_file(self, path: str) -> int:
        """A read-only fd of a regular file or directory in /box, /tmp or /dev/shm, for the caller to close.

        Box init opens it, never through a symlink and never blocking on a FIFO
        the program planted: reading through the fd trusts no path the program
        controls.  A directory's entries can be listed through it (os.scandir),
        not opened: open each with `open_file` again.
        """
        reply, fds = await self._open_box().file_op(["read", *self._beneath(path)], [])
        if "error" in reply:
            raise BoxFileError(reply["error"])
        return fds[0]

    async def read_file(self, path: str, max_size: int = 64 * 2**20) -> bytes:
        """The contents of a regular file in /box, /tmp or /dev/shm (see `open_file`), at most `max_size` bytes."""
        try:
            fd = await self.open_file(path)
        except BoxFileError as e:
            raise BoxFileError(f"read_file {e}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_size:
            os.close(fd)
            raise BoxFileError(f"read_file {path}: " + (f"{st.st_size} bytes is more than max_size={max_size}"
                                                        if stat.S_ISREG(st.st_mode) else "not a regular file"))
        with os.fdopen(fd, "rb") as f:
            return f.read(max_size)

    async def reset(self) -> None:
        """Make the box as new: every writable dir as the layout made it, no IPC object (no process outlives a run).

        A box whose root is a union cannot be: what the program wrote anywhere
        in that root is in the union's upper.  It raises SetupError, and a pool
        replaces such a box instead.
        """
        if self._lowers:
            raise SetupError("a box with --lower layers cannot be reset (its upper keeps what the run wrote)")
        reply, _ = await self._open_box().file_op(["reset"], [])
        if "error" in reply:
            raise SetupError(f"reset failed: {reply['error']}")

    def _beneath(self, path: str) -> list[str]:
        """`path` for box init: as given (to name it in errors), its writable dir, and the path beneath that."""
        try:
            if "\0" in path:
                raise ValueError(f"{path!r}: a path cannot contain NUL bytes")
            return [path, *locate(path, self.home)]
        except ValueError as e:
            raise BoxFileError(str(e)) from None

    def _open_box(self) -> Box:
        if self._box is None:
            raise SetupError("sandbox is not open (use `async with Sandbox(...)`)")
        return self._box

    async def run(
        self,
        argv: Sequence[str],
        *,
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | int | None = None,
        stdout: int | Relay | None = None,
        stderr: int | Relay | None = None,
        policy: str | None | Inherit = INHERIT,
        started: Callable[[], None] | None = None,
        terminal: bool = False,
    ) -> Result:
        """Run one program to completion.

        `stdin`: data to read (a file holding it), an fd to hand over, or None
        for /dev/null.
        `stdout`/`stderr`: None captures into the Result, `Relay(fd)` streams to
        fd as output comes, a plain fd is handed to the program as it is (then
        that stream is not counted against the output limit).  When both are
        captured the spawner collects them, with no reader task here.
        `policy`: a seccomp policy name or file for this run, None for none;
        by default the sandbox's.  `started`: called once the program runs (its
        execve succeeded), before its end: a detached box's monitor says so then.
        `terminal`: `stdin` is a terminal made for this run alone, to be the
        program's controlling terminal (sbx exec -t); never give one that
        anyone else reads, as the program could push input to them.
        """
        pumps = stdout is not None or stderr is not None  # else the spawner captures both: no task to wait for
        with single_error():
            async with anyio.create_task_group() if pumps else nullcontext() as tasks:
                pending = await self._start(tasks, argv, limits=limits, env=env, cwd=cwd, stdin=stdin,
                                            stdout=stdout, stderr=stderr, policy=policy, started=started,
                                            terminal=terminal)
                reply = await pending.reply()
        return pending.finish(reply)  # only now have the pumps drained every pipe

    async def _start(
        self,
        tasks: TaskGroup | None,
        argv: Sequence[str],
        *,
        limits: Limits | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdin: bytes | int | None,
        stdout: int | Relay | None,
        stderr: int | Relay | None,
        policy: str | None | Inherit = INHERIT,
        more_fds: Mapping[int, bytes | int] | None = None,
        tty: bool = False,
        started: Callable[[], None] | None = None,
        terminal: bool = False,
    ) -> _Pending:
        """Send the run request (the program starts) and return what waits for its end.

        `tasks`: where the output pumps run, None when the spawner captures both streams (no pump then).
        `more_fds`: the program's fds from 3 up, each as `stdin` (data, or an fd
        handed over); one not given below the highest is /dev/null.  `tty`: stdout and stderr are
        one terminal, whose output is captured as stdout.
        """
        box = self._open_box()
        cgroup = box.cgroup is not None
        prepared = self.prepare(argv, limits, env, cwd, policy, cgroup)
        limits = prepared.limits
        more_fds = more_fds or {}
        if terminal and not (isinstance(stdin, int) and os.isatty(stdin)):
            raise ConfigError("a controlling terminal is the program's stdin: give a terminal as stdin")
        if tty and (stdout is not None or stderr is not None):
            raise ConfigError("a terminal is the program's stdout and stderr, captured: neither may be given")
        if any(not 3 <= fd < MAX_PROGRAM_FDS for fd in more_fds):
            raise ConfigError(f"a program's further fds are 3 to {MAX_PROGRAM_FDS - 1}")
        out = Output(limits.output, box, self.mask)
        captured = self._capture_files() if stdout is None and stderr is None and not tty else None
        fds = [await input_fd(stdin)]
        try:
            if captured is not None:
                fds += [os.dup(fd) for fd in captured]
            else:
                assert tasks is not None, "output that is not captured is pumped by a task"
                if tty:
                    master, slave = os.openpty()
                    tasks.start_soon(out.pump, master, None, out.stdout)
                    fds += [slave, os.dup(slave)]
                else:
                    for mode, buf in ((stdout, out.stdout), (stderr, out.stderr)):
                        if isinstance(mode, int):
                            fds.append(os.dup(mode))
                            continue
                        r, w = program_pipe()
                        tasks.start_soon(out.pump, r, mode if isinstance(mode, Relay) else None, buf)
                        fds.append(w)
            for fd in range(3, max(more_fds, default=2) + 1):
                fds.append(await input_fd(more_fds.get(fd)))
            req = prepared.request(box.ids, cgroup, captured is not None, len(fds), started is not None, terminal)
            if prepared.filter_fd is not None:
                fds.append(os.dup(prepared.filter_fd))
        except BaseException:
            _close_all(fds)
            raise
        await box.start_run(req, fds, limits, started)
        return _Pending(box, req, limits, out, prepared.policy, cgroup, captured, self.mask())


@dataclass
class _Pending:
    box: Box
    req: RunRequest
    limits: Limits
    out: Output
    policy: str | None
    cgroup: bool
    captured: tuple[int, int] | None
    mask: Mask

    async def reply(self) -> RunEnd | StartFailure:
        """The run's end; a box whose union filesystem daemon dies meanwhile ends it (IE).

        Every process of the run is gone by then, so the output pumps stop at
        what is already in their pipes rather than wait for an EOF that a
        descriptor parked in a unix socket could hold off for good.
        """
        box = self.box
        if not box.daemons:
            reply = await box.reply(self.limits.wall_time)
        else:
            async with anyio.create_task_group() as watcher:
                watcher.start_soon(box.watch_daemons)
                reply = await box.reply(self.limits.wall_time)
                watcher.cancel_scope.cancel()
        self.out.end()
        return reply

    def finish(self, end: RunEnd | StartFailure) -> Result:
        """Called once the pumps, if any, have drained every pipe."""
        if self.captured is not None:
            sizes = end.out if isinstance(end, RunEnd) else (0, 0)
            for fd, buf, size in zip(self.captured, (self.out.stdout, self.out.stderr), sizes, strict=True):
                buf += os.pread(fd, size, 0)
                os.ftruncate(fd, 0)
        death = self.box.daemon_death()
        if death is not None:
            end = (end if isinstance(end, RunEnd) else NEVER_RAN).replace(killed=death)
        if isinstance(end, StartFailure):
            raise exec_failure(end, self.req)
        result = verdict(end, self.limits, output_exceeded=self.out.exceeded,
                         enforcement=enforcement(self.limits, self.policy, self.cgroup, self.req.trace))
        result.stdout, result.stderr = self.mask.apply(bytes(self.out.stdout)), self.mask.apply(bytes(self.out.stderr))
        result.message = self.mask.apply_text(result.message)
        return result


@dataclass(frozen=True)
class Program:
    """One program of a group that `run_connected` runs at once: its box, and what `Sandbox.run` takes for it.

    `fds`: the program's fds from 3 up, each as `stdin` is.
    `tty`: its stdout and stderr are one terminal, captured as its stdout.
    """

    box: Sandbox
    argv: Sequence[str]
    limits: Limits | None = None
    env: Mapping[str, str] | None = None
    policy: str | None | Inherit = INHERIT
    stdin: bytes | int | None = None
    fds: Mapping[int, bytes | int] = field(default_factory=dict)
    tty: bool = False


@dataclass(frozen=True)
class Pipe:
    """A pipe from the fd `writer` of one program to the fd `reader` of another, each (program's index, fd): a
    plain kernel pipe, or with a `Tap` relayed through this process, which keeps what passes (tap.py)."""

    writer: tuple[int, int]
    reader: tuple[int, int]
    tap: Tap | None = None


async def run_connected(programs: Sequence[Program], pipes: Sequence[Pipe]) -> list[Result]:
    """Programs that run at once, joined by pipes from any fd of one to any fd of another (go-judge's
    pipeMapping); their results, in order.

    A program's stdout and stderr that no pipe takes are captured in its
    Result, and its stdin is its `stdin` unless a pipe feeds it.  Each pipe's
    only copies end up in the runs, so a reader sees EOF as soon as its
    writer's run is over, and a writer EPIPE once its reader's is.
    """
    if not programs:
        raise ConfigError("no program to run")
    ends: dict[tuple[int, int], int] = {}
    ours: list[int] = []
    relays: list[_Relay] = []
    pending: list[_Pending] = []
    replies: list[RunEnd | StartFailure] = [NEVER_RAN for _ in programs]
    try:
        for pipe in pipes:
            for end in (pipe.writer, pipe.reader):
                index, fd = end
                if not 0 <= index < len(programs) or not 0 <= fd < MAX_PROGRAM_FDS:
                    raise ConfigError(f"pipe end {index}:{fd}: there are {len(programs)} programs, with fds 0 to "
                                      f"{MAX_PROGRAM_FDS - 1}")
                if end in ends or fd in programs[index].fds:
                    raise ConfigError(f"pipe end {index}:{fd}: program {index}'s fd {fd} is given twice")
            write, read, both, tapped = _join(pipe.tap)
            ours += both
            relays += [tapped] if tapped is not None else []
            ends[pipe.writer], ends[pipe.reader] = write, read
        with single_error():
            async with anyio.create_task_group() as tasks:
                try:
                    for i, p in enumerate(programs):
                        mine = {fd: end for (index, fd), end in ends.items() if index == i}
                        pending.append(await p.box._start(
                            tasks, p.argv, limits=p.limits, env=p.env, cwd=None, stdin=mine.pop(0, p.stdin),
                            stdout=mine.pop(1, None), stderr=mine.pop(2, None), policy=p.policy,
                            more_fds={**p.fds, **mine}, tty=p.tty))
                except BaseException:  # the programs started already end now, not at their wall limit
                    with anyio.CancelScope(shield=True):
                        for started in pending:
                            await started.box.kill_run("another program of its group could not start")
                            await started.reply()
                    raise
                _close_all(ours)
                ours = []
                for source, sink, tap in relays:
                    tasks.start_soon(relay, source, sink, tap)
                relays = []

                async def collect(i: int) -> None:
                    replies[i] = await pending[i].reply()

                for i in range(len(pending) - 1):
                    tasks.start_soon(collect, i)
                await collect(len(pending) - 1)
    finally:
        _close_all((*ours, *(fd for r in relays for fd in r[:2])))
    for pipe in pipes:  # what a tap kept is shown to the caller: masked with the secrets of both its ends
        if pipe.tap is not None:
            mask = Mask(programs[pipe.writer[0]].box.secret_values + programs[pipe.reader[0]].box.secret_values)
            pipe.tap.data[:] = mask.apply(bytes(pipe.tap.data))
    return [p.finish(reply) for p, reply in zip(pending, replies, strict=True)]


async def run_interactive(
    box_a: Sandbox, argv_a: Sequence[str], box_b: Sandbox, argv_b: Sequence[str], *,
    limits_a: Limits | None = None, limits_b: Limits | None = None,
    policy_a: str | None | Inherit = INHERIT, policy_b: str | None | Inherit = INHERIT,
    env_a: Mapping[str, str] | None = None, env_b: Mapping[str, str] | None = None,
    tap_ab: Tap | None = None, tap_ba: Tap | None = None,
) -> tuple[Result, Result]:
    """Two programs, each one's stdout the other's stdin (run_connected); both sides' stderr is captured."""
    ra, rb = await run_connected([Program(box_a, argv_a, limits_a, env_a, policy_a),
                                  Program(box_b, argv_b, limits_b, env_b, policy_b)],
                                 [Pipe((0, 1), (1, 0), tap_ab), Pipe((1, 1), (0, 0), tap_ba)])
    return ra, rb


async def run_pipeline(
    box_a: Sandbox, argv_a: Sequence[str], box_b: Sandbox, argv_b: Sequence[str], *,
    stdin: bytes | int | None = None,
    limits_a: Limits | None = None, limits_b: Limits | None = None,
    policy_a: str | None | Inherit = INHERIT, policy_b: str | None | Inherit = INHERIT,
    env_a: Mapping[str, str] | None = None, env_b: Mapping[str, str] | None = None, tap: Tap | None = None,
) -> tuple[Result, Result]:
    """`a | b` (run_connected): a reads `stdin` (as in `Sandbox.run`); b's stdout and both stderrs are captured."""
    ra, rb = await run_connected([Program(box_a, argv_a, limits_a, env_a, policy_a, stdin),
                                  Program(box_b, argv_b, limits_b, env_b, policy_b)],
                                 [Pipe((0, 1), (1, 0), tap)])
    return ra, rb


_Relay = tuple[int, int, Tap]


def _join(tap: Tap | None) -> tuple[int, int, tuple[int, int], _Relay | None]:
    """A pipe from one program to the other: the writer's end, the reader's end, both (closed once the runs have
    them), and with a tap the relay's two ends."""
    if tap is None:
        read, write = program_pipe()
        return write, read, (read, write), None
    (relay_in, writer), (reader, relay_out) = tapped_pipe()
    return writer, reader, (writer, reader), (relay_in, relay_out, tap)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


