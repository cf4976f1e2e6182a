"""The async API: a `Sandbox` is built once and then runs any number of programs.

The CLI's `sbx run` is a Sandbox that lives for one run, so the command line
and the judge share one launcher.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from .box import Box
from .errors import ConfigError, ExecError, SetupError
from .limits import Limits
from .mounts import WORK_DIR, Bind, Layout, check_box_path
from .result import Result
from .rlimits import rlimits
from .userns import IdmapMode, detect
from .verdict import enforcement, verdict

BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8"}
_CHUNK = 1 << 16


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
        cwd: str = WORK_DIR,
    ) -> None:
        if net not in ("none", "loopback"):
            raise ConfigError(f"--net: unknown mode {net!r} (expected none or loopback)")
        self.limits = limits or Limits()
        self.layout = Layout(disk, inodes, tuple(binds), tuple(check_box_path(t, "--tmpfs") for t in tmpfs),
                             loopback=net == "loopback")
        self.env = dict(env or {})
        self.cwd = cwd
        self._idmap: IdmapMode = idmap
        self._box: Box | None = None

    async def __aenter__(self) -> Sandbox:
        self._box = Box(self.layout, detect(self._idmap))
        await self._box.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._box is not None:
            box, self._box = self._box, None
            await box.aclose()

    async def run(
        self,
        argv: Sequence[str],
        *,
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
    ) -> Result:
        """Run one program to completion.

        `stdin` is data to feed, an fd to hand over as it is, or None for
        /dev/null.  `stdout`/`stderr` None captures into the Result; an fd
        receives the output as it comes.  Either way the output limit counts.
        """
        if self._box is None:
            raise SetupError("sandbox is not open (use `async with Sandbox(...)`)")
        if not argv:
            raise ConfigError("no program given")
        limits = limits or self.limits
        box = self._box
        req = {
            "argv": list(argv),
            "env": {**BASE_ENV, **self.env, **(env or {})},
            "cwd": cwd or self.cwd,
            "rlimits": rlimits(limits, box.ids),
            "cpu_time": limits.cpu_time,
            "wall_time": limits.wall_time,
        }
        out = _Output(limits.output, box)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        feed_w = -1
        if isinstance(stdin, bytes):
            in_fd, feed_w = os.pipe2(os.O_CLOEXEC)
        elif stdin is None:
            in_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        else:
            in_fd = os.dup(stdin)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(out.pump, out_r, stdout, out.stdout)
            nursery.start_soon(out.pump, err_r, stderr, out.stderr)
            if feed_w >= 0:
                assert isinstance(stdin, bytes)
                nursery.start_soon(_feed, feed_w, stdin)
            reply = await box.request(req, [in_fd, out_w, err_w])
        if "exec_error" in reply:
            raise _exec_failure(reply["exec_error"], req)
        result = verdict(reply, limits, output_exceeded=out.exceeded, enforcement=enforcement(limits))
        result.stdout, result.stderr = bytes(out.stdout), bytes(out.stderr)
        return result


@dataclass
class _Output:
    """stdout and stderr share one output limit; past it the run is killed (OLE) and the rest discarded."""

    limit: int | None
    box: Box
    used: int = 0
    exceeded: bool = False

    def __post_init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()

    async def pump(self, fd: int, sink: int | None, buf: bytearray) -> None:
        async with trio.lowlevel.FdStream(fd) as stream:
            while chunk := await stream.receive_some(_CHUNK):
                if self.exceeded:
                    continue
                if self.limit is not None and self.used + len(chunk) > self.limit:
                    chunk = chunk[: self.limit - self.used]
                    self.exceeded = True
                    await self.box.kill_run("OLE")
                self.used += len(chunk)
                if sink is None:
                    buf += chunk
                elif chunk:
                    await trio.to_thread.run_sync(_write_all, sink, chunk)


def _write_all(fd: int, data: bytes) -> None:
    """Blocking writes in a worker thread: the caller's fd (a terminal, a pipe) must stay in blocking mode."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return


async def _feed(fd: int, data: bytes) -> None:
    async with trio.lowlevel.FdStream(fd) as stream:
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the program exited without reading all its input: not our failure


def _exec_failure(err: dict[str, object], req: dict[str, object]) -> Exception:
    code = int(err.get("errno", errno.EINVAL))  # type: ignore[arg-type]
    message = str(err.get("message", os.strerror(code)))
    stage = err.get("stage")
    if stage == "exec":
        return ExecError(f"{req['argv'][0]}: {message}", code)  # type: ignore[index]
    if stage == "cwd":
        return ConfigError(f"--cwd {req['cwd']}: {message}")
    return SetupError(f"preparing the program failed: {message}")
