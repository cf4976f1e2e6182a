"""The async API: a `Sandbox` is built once and then runs any number of programs.

The CLI's `sbx run` is a Sandbox that lives for one run, so the command line
and the judge share one launcher.
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from . import scratch, teardown
from .box import plan
from .box.cgroups import delegation
from .box.files import locate
from .box.layout import WORK_DIR, Bind, Layout, check_box_path, parse_lower, parse_upper, resolve_bind
from .box.run_protocol import MAX_ARGS, MAX_PROGRAM_FDS, RunEnd, RunRequest, Seccomp, StartFailure
from .box.supervisor import Box
from .box.userns import IdmapMode, detect
from .errors import BoxFileError, ConfigError, ExecError, SetupError, single_error
from .hostpath import Guard
from .run import fallback
from .run.limits import Limits
from .run.output import Output, Relay, input_fd, write_all
from .run.result import Result
from .run.rlimits import rlimits
from .run.runtime_env import runtime_env
from .run.tap import Tap, program_pipe, relay, tapped_pipe
from .run.verdict import enforcement, verdict
from .seccomp import prebuilt
from .teardown import TeardownWarning
from .upper import apart, lock_upper

if TYPE_CHECKING:
    from .images.store import Image
    from .seccomp.policy import Policy

DEFAULT_POLICY = "default"
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # and HOME: the box's home
_NEVER_RAN = RunEnd(None, 0.0, 0.0, 0)
"""The accounting of a run whose program never started."""


KERNEL_UPPER = ("kernel overlayfs writes straight into the --upper dir on the host, where nothing rootless can hold "
                "--disk and --inodes: use --fs fuse, or leave out --upper (the scratch upper is capped)")
"""Why a kernel union cannot keep its upper on the host (quotas; see README, "Layers")."""


class _Inherit:
    """The default of `run(policy=...)`: use the sandbox's policy (None already means "no policy")."""


_INHERIT = _Inherit()


class ExactEnv(dict[str, str]):
    """A run's environment given whole (`run(env=ExactEnv(...))`): the sandbox adds nothing to it, neither its
    defaults (PATH, HOME, LANG), the runtimes' memory settings (runtime_env.py), nor the sandbox's own `env`.
    go-judge's clients expect exactly the list they send."""


class Sandbox:
    """A prepared box; `run()` starts programs in it, all sharing its /box and /tmp."""

    DEFAULT_DISK = 256 * 2**20
    DEFAULT_INODES = 16384

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        binds: Sequence[Bind] = (),
        tmpfs: Sequence[str] = (),
        disk: int = DEFAULT_DISK,
        inodes: int = DEFAULT_INODES,
        net: str = "loopback",
        idmap: IdmapMode = "auto",
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        policy: str | None = DEFAULT_POLICY,
        lowers: Sequence[str] = (),
        upper: str | None = None,
        fs: str = "auto",
        image: str | None = None,
        commit: str | None = None,
        home: str = WORK_DIR,
    ) -> None:
        """`image`: NAME[:TAG] in the image store; its layers are the lowers, and its Env, WorkingDir and
        Entrypoint/Cmd the defaults (`cwd` defaults to /box without an image).  `commit`: NEW[:TAG], the
        image plus what the runs wrote, made when the sandbox closes (`committed` then holds it).  `home`: the
        writable working directory beside /tmp and /dev/shm (go-judge's clients expect /w)."""
        if net not in ("none", "loopback"):
            raise ConfigError(f"--net: unknown mode {net!r} (expected none or loopback)")
        self.limits = limits or Limits()
        self.image: Image | None = None
        if image is not None:
            if lowers:
                raise ConfigError("--image and --lower: the image's layers are the lowers")
            from .images.store import Store  # (not loaded for runs without an image: it costs ~30 ms)
            self._store = Store()
            self.image = self._store.get(image)
            lowers = [os.path.join(self._store.layer_dir(c), "root") for c in reversed(self.image.chain_ids)]
        if upper is not None and not lowers:
            raise ConfigError("--upper needs --lower or --image: it is the writable layer over them")
        if commit is not None:
            from .images.store import parse_ref
        self._commit = parse_ref(commit) if commit is not None else None
        self.committed: Image | None = None
        self._lowers = tuple(parse_lower(d) for d in lowers)
        self._upper = parse_upper(upper) if upper is not None else None
        self._tmpfs = tuple(check_box_path(t, "--tmpfs") for t in tmpfs)
        writable = [resolve_bind(b, Guard()).identity for b in binds if b.writable]
        if self._upper is not None:
            upper_st = os.stat(self._upper, follow_symlinks=False)
            writable.append((upper_st.st_dev, upper_st.st_ino))
        # the host dirs the box can write: no caller's path follows a link below them (hostpath.py), so the
        # binds are resolved again with them known, and the command line resolves its copies with them
        self.writable_dirs = Guard(frozenset(i for i in writable if i is not None))
        self._binds = tuple(resolve_bind(b, self.writable_dirs) for b in binds)
        if self._upper is not None:
            apart(self._upper, [("--lower", d) for d in self._lowers]
                   + [("--bind" if b.writable else "--ro-bind", b.src) for b in self._binds])
        self._disk, self._inodes, self._loopback = disk, inodes, net == "loopback"
        self._host_dirs: dict[str, tuple[int, int]] = {}
        self._locks: list[int] = []  # flocks held while this sandbox's box and daemon live (see _lock_upper)
        if fs not in ("auto", "fuse", "kernel"):
            raise ConfigError(f"--fs: unknown filesystem {fs!r} (expected fuse, kernel or auto)")
        if fs == "auto":  # kernel overlayfs, unless the run needs what only the FUSE union gives
            needs = self._upper is not None or self._commit is not None
            if not needs and self.image is not None:
                ids = detect(idmap)
                needs = self._store.owns(self.image, ids.program_uid, ids.program_gid)
            fs = "fuse" if needs and os.access("/dev/fuse", os.R_OK | os.W_OK) else "kernel"
            if fs == "kernel" and self._upper is not None:
                raise ConfigError(f"--fs auto chose --fs kernel (/dev/fuse is not usable here), {KERNEL_UPPER}")
        if fs == "kernel" and self._upper is not None:
            raise ConfigError(f"--fs kernel with --upper: {KERNEL_UPPER}")
        self.fs = fs
        if self._commit is not None and (self.image is None or self.fs != "fuse"):
            raise ConfigError("--commit needs --image and the FUSE union (--fs fuse): the kernel union's upper "
                              "lives inside the box")
        defaults = self.image.runtime if self.image is not None else {}
        self.env = {**dict(e.split("=", 1) for e in defaults.get("Env") or [] if "=" in e), **(env or {})}
        self.home = check_box_path(home, "home")
        if self.home in ("/tmp", "/dev/shm") or self.home.startswith(("/tmp/", "/dev/")):
            raise ConfigError(f"home {home}: must be a directory of its own, not in /tmp or /dev")
        if cwd is not None and not cwd.startswith("/"):
            raise ConfigError(f"--cwd {cwd}: must be an absolute path in the box")
        self.cwd = os.path.normpath(cwd) if cwd else defaults.get("WorkingDir") or ("/" if self.image else self.home)
        self._idmap: IdmapMode = idmap
        self._box: Box | None = None
        self._union_upper: str | None = None
        self.policy = policy
        self._filters: dict[tuple[str, bool], tuple[int, bool]] = {}  # memfd, and whether refusals are counted
        self._policies: dict[str, Policy] = {}
        self._captured: tuple[int, int] | None = None
        if policy is not None:
            self._check_policy(policy)

    async def __aenter__(self) -> Sandbox:
        upper, workdir = self._upper, None
        try:
            if self.image is not None:
                self._pin_image(self.image)
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
            self._box = Box(layout, detect(self._idmap), found, daemon_holds=tuple(self._locks))
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

    def plan(self) -> tuple[plan.Step, ...]:
        """The steps that will build this sandbox's box (plan.py; `sbx run --dry-run`), without building it.  The
        scratch dirs a FUSE union's upper gets on entry are named by what they will be."""
        upper, workdir = self._upper, None
        if upper is not None:
            workdir = os.path.join(os.path.dirname(upper), f".sbx-work-{os.path.basename(upper)}-(made on entry)")
        elif self._lowers and self.fs == "fuse":
            upper, workdir = "(a scratch dir)/upper", "(a scratch dir)/work"
        return plan.make(self._layout(upper, workdir), detect(self._idmap))

    def _layout(self, upper: str | None, workdir: str | None) -> Layout:
        return Layout(self._disk, self._inodes, self._binds, self._tmpfs, lowers=self._lowers, upper=upper,
                      workdir=workdir, fs=self.fs, loopback=self._loopback, home=self.home)

    def _pin_image(self, image: Image) -> None:
        """Shared locks on the image's layers while the box and its daemon live: no prune removes them."""
        pinned, fds = self._store.pin(image.ref)
        self._locks += fds
        if pinned.digest != image.digest:
            raise ConfigError(f"image {image.ref}: it was replaced by another since this sandbox was made")

    def command(self, argv: Sequence[str]) -> list[str]:
        """What runs for `argv`: with an image, its Entrypoint first, and its Cmd when `argv` is empty."""
        if self.image is None:
            return list(argv)
        defaults = self.image.runtime
        return [*(defaults.get("Entrypoint") or []), *(argv or defaults.get("Cmd") or [])]

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
            for fd in self._locks:
                os.close(fd)  # the daemon holds its own copies until it exits: then the flocks are released
            self._locks = []

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _policy(self, name: str) -> Policy:
        """Read once per sandbox: a run must not pay for reading policy files."""
        if name not in self._policies:
            from .seccomp.policy import load_policy
            self._policies[name] = load_policy(name)
        return self._policies[name]

    def _check_policy(self, name: str) -> None:
        """A bad policy is bad input: it fails before any box is built.  A shipped one was checked when built."""
        if prebuilt.load(name) is None:
            self._policy(name)

    def _one_process(self, name: str) -> bool:
        built = prebuilt.load(name)
        return built.one_process if built is not None else fallback.one_process(self._policy(name))

    def _filter(self, policy: str, unmapped_memory: bool = True) -> tuple[int, bool]:
        """A memfd holding the policy's BPF, built with the wheel (prebuilt.py) or compiled once per sandbox, and
        whether the spawner may count its refusals (compiler.SPAWN_CALLS).

        Without `unmapped_memory`, the calls that make memory no process maps fail (see fallback.py).
        """
        key = (policy, unmapped_memory)
        if key not in self._filters:
            built = prebuilt.load(policy)
            if built is not None:
                bpf, counted = built.bpf[unmapped_memory]
            else:
                from .seccomp import compiler
                loaded = self._policy(policy)
                compiled = compiler.compile(loaded if unmapped_memory else fallback.without_unmapped_memory(loaded))
                bpf, counted = compiled.bpf, compiled.counts_refusals
            fd = os.memfd_create(f"sbx-seccomp-{os.path.basename(policy)}", os.MFD_CLOEXEC)
            write_all(fd, bpf)
            self._filters[key] = (fd, counted)
        return self._filters[key]

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
            for fd in (*(fd for fd, _ in self._filters.values()), *(self._captured or ())):
                os.close(fd)
            self._filters.clear()
            self._captured = None
            if self._box is not None:
                box, self._box = self._box, None
                try:
                    await box.aclose()
                except Exception as e:  # noqa: BLE001 - said, never raised: it would lose the caller's results
                    warnings.warn(TeardownWarning(f"closing the box failed: {e}"), stacklevel=2)
                if self._commit is not None and self.image is not None and self._union_upper is not None:
                    # the daemon is gone: the upper holds all it will; and it is removed right after
                    self.committed = await anyio.to_thread.run_sync(self._store.commit, self.image,
                                                                    self._union_upper, self._commit)
        finally:
            self._remove_workdir()  # after the box and its daemon are gone, whatever happened before

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
        policy: str | None | _Inherit = _INHERIT,
    ) -> Result:
        """Run one program to completion.

        `stdin`: data to read (a file holding it), an fd to hand over, or None
        for /dev/null.
        `stdout`/`stderr`: None captures into the Result, `Relay(fd)` streams to
        fd as output comes, a plain fd is handed to the program as it is (then
        that stream is not counted against the output limit).  When both are
        captured the spawner collects them, with no reader task here.
        `policy`: a seccomp policy name or file for this run, None for none;
        by default the sandbox's.
        """
        with single_error():
            async with anyio.create_task_group() as tasks:
                pending = await self._start(tasks, argv, limits=limits, env=env, cwd=cwd, stdin=stdin,
                                            stdout=stdout, stderr=stderr, policy=policy)
                reply = await pending.reply()
        return pending.finish(reply)  # only now have the pumps drained every pipe

    async def _start(
        self,
        tasks: TaskGroup,
        argv: Sequence[str],
        *,
        limits: Limits | None,
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdin: bytes | int | None,
        stdout: int | Relay | None,
        stderr: int | Relay | None,
        policy: str | None | _Inherit = _INHERIT,
        more_fds: Mapping[int, bytes | int] | None = None,
        tty: bool = False,
    ) -> _Pending:
        """Send the run request (the program starts) and return what waits for its end.

        `more_fds`: the program's fds from 3 up, each as `stdin` (data, or an fd
        handed over); one not given below the highest is /dev/null.  `tty`: stdout and stderr are
        one terminal, whose output is captured as stdout.
        """
        box = self._open_box()
        argv = self.command(argv)
        if not argv:
            raise ConfigError("no program given" + (" (and the image has no Cmd)" if self.image else ""))
        limits = limits or self.limits
        cgroup = box.cgroup is not None
        if limits.cpus is not None and not cgroup:
            raise ConfigError(f"--cpus needs cgroup v2 delegation, and there is none: {delegation().reason}")
        sampled_memory = None if cgroup else limits.memory
        full_env = dict(env) if isinstance(env, ExactEnv) else \
            {**BASE_ENV, "HOME": self.home, **runtime_env(limits.memory, cgroup), **self.env, **(env or {})}
        if len(argv) > MAX_ARGS or len(full_env) > MAX_ARGS:
            raise ConfigError(f"at most {MAX_ARGS} arguments and {MAX_ARGS} environment variables")
        policy_name = self.policy if isinstance(policy, _Inherit) else policy
        trace = fallback.traced(limits, cgroup, policy_name is not None and self._one_process(policy_name))
        filter_fd, counted = (None, False) if policy_name is None else self._filter(policy_name, sampled_memory is None)
        more_fds = more_fds or {}
        if tty and (stdout is not None or stderr is not None):
            raise ConfigError("a terminal is the program's stdout and stderr, captured: neither may be given")
        if any(not 3 <= fd < MAX_PROGRAM_FDS for fd in more_fds):
            raise ConfigError(f"a program's further fds are 3 to {MAX_PROGRAM_FDS - 1}")
        out = Output(limits.output, box)
        captured = self._capture_files() if stdout is None and stderr is None and not tty else None
        fds = [await input_fd(stdin)]
        try:
            if captured is not None:
                fds += [os.dup(fd) for fd in captured]
            elif tty:
                master, terminal = os.openpty()
                tasks.start_soon(out.pump, master, None, out.stdout)
                fds += [terminal, os.dup(terminal)]
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
            req = RunRequest(
                argv=tuple(argv), env=full_env, cwd=cwd or self.cwd, rlimits=rlimits(limits, box.ids, cgroup),
                cpu_time=limits.cpu_time, wall_time=limits.wall_time, memory=sampled_memory, output=limits.output,
                cpu_set=limits.cpu_set, trace=trace, capture=captured is not None, fds=len(fds),
                seccomp=Seccomp.NONE if filter_fd is None else Seccomp.COUNTED if counted else Seccomp.AS_IS)
            if filter_fd is not None:
                fds.append(os.dup(filter_fd))
        except BaseException:
            _close_all(fds)
            raise
        await box.start_run(req, fds, limits)
        return _Pending(box, req, limits, out, policy_name, cgroup, captured)


@dataclass
class _Pending:
    box: Box
    req: RunRequest
    limits: Limits
    out: Output
    policy: str | None
    cgroup: bool
    captured: tuple[int, int] | None

    async def reply(self) -> RunEnd | StartFailure:
        """The run's end; a box whose union filesystem daemon dies meanwhile ends it (IE).

        Every process of the run is gone by then, so the output pumps stop at
        what is already in their pipes rather than wait for an EOF that a
        descriptor parked in a unix socket could hold off for good.
        """
        box = self.box
        if box.daemon is None:
            reply = await box.reply(self.limits.wall_time)
        else:
            async with anyio.create_task_group() as watcher:
                watcher.start_soon(box.watch_daemon)
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
            end = replace(end if isinstance(end, RunEnd) else _NEVER_RAN, killed=death)
        if isinstance(end, StartFailure):
            raise _exec_failure(end, self.req)
        result = verdict(end, self.limits, output_exceeded=self.out.exceeded,
                         enforcement=enforcement(self.limits, self.policy, self.cgroup, self.req.trace))
        result.stdout, result.stderr = bytes(self.out.stdout), bytes(self.out.stderr)
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
    policy: str | None | _Inherit = _INHERIT
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
    replies: list[RunEnd | StartFailure] = [_NEVER_RAN for _ in programs]
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
    return [p.finish(reply) for p, reply in zip(pending, replies, strict=True)]


async def run_interactive(
    box_a: Sandbox, argv_a: Sequence[str], box_b: Sandbox, argv_b: Sequence[str], *,
    limits_a: Limits | None = None, limits_b: Limits | None = None,
    policy_a: str | None | _Inherit = _INHERIT, policy_b: str | None | _Inherit = _INHERIT,
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
    policy_a: str | None | _Inherit = _INHERIT, policy_b: str | None | _Inherit = _INHERIT,
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


def _exec_failure(failure: StartFailure, req: RunRequest) -> Exception:
    code, stage = failure.errno, failure.stage
    message = os.strerror(code)
    if stage == "exec":
        return ExecError(f"{req.argv[0]}: {message}", code)
    if stage == "cwd":
        return ConfigError(f"--cwd {req.cwd}: {message}")
    if stage == "cgroup":
        return SetupError(f"the program could not join its run's cgroup: {message}")
    if stage == "trace":
        return SetupError(f"the spawner cannot trace the run, which is how it counts the CPU time of every process "
                          f"without cgroup v2 ({message}; see `sbx check`): give --pids 1, or delegate cgroup v2")
    return SetupError(f"preparing the program failed: {message}")
