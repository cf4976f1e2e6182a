"""A run's input and output as the supervisor handles them: data given as a sealed file, output captured or relayed
as it comes, within one limit for stdout and stderr together."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ..box.supervisor import Box
from .mask import Mask
from .relay import Relay, write_all

_CHUNK = 1 << 16
_SEALED = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


async def input_fd(data: bytes | int | None) -> int:
    """An input's fd (stdin, or a further fd): data is given as a file (as isolate and go-judge do), so there is no
    feeder task, and a program may seek or reread it.

    Large data is copied in a worker thread, so other boxes' runs go on meanwhile.  The file is sealed: its
    memory is the supervisor's, and a program that could write to it would grow it outside its own limits.
    """
    if isinstance(data, bytes):
        fd = os.memfd_create("sbx-input", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            if len(data) > _CHUNK:
                await anyio.to_thread.run_sync(write_all, fd, data)
            else:
                write_all(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALED)
        except BaseException:
            os.close(fd)
            raise
        return fd
    if data is None:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return os.dup(data)


@dataclass
class Output:
    """stdout and stderr share one output limit; past it the run is killed (OLE) and the rest discarded.  What is
    relayed as it comes is masked as it comes (`mask` makes one masker per stream); what is captured is masked
    whole, once the run is over (`_Pending.finish`, api.py)."""

    limit: int | None
    box: Box
    mask: Callable[[], Mask]
    used: int = 0
    exceeded: bool = False

    def __post_init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._waits: list[anyio.CancelScope] = []
        self._ended = False

    def end(self) -> None:
        """The run is over: each pump takes what its pipe holds and stops."""
        self._ended = True
        for scope in self._waits:
            scope.cancel()

    async def pump(self, fd: int, sink: Relay | None, buf: bytearray) -> None:
        """Read the pipe `fd` (closed at the end) until EOF, or until the run's end and then what it holds."""
        os.set_blocking(fd, False)
        mask = self.mask()
        try:
            wait = anyio.CancelScope()
            self._waits.append(wait)
            if self._ended:
                wait.cancel()
            with wait:
                while (chunk := _read_buffered(fd)) != b"":
                    if chunk is None:
                        await anyio.wait_readable(fd)
                        continue
                    with anyio.CancelScope(shield=True):  # a chunk read is never dropped by the end's cancel
                        await self._take(chunk, sink, buf, mask)
            if wait.cancelled_caught:  # the run is over before its pipe's EOF: what the pipe holds is all
                while chunk := _read_buffered(fd):
                    await self._take(chunk, sink, buf, mask)
            if sink is not None and (rest := mask.flush()):
                with anyio.CancelScope(shield=True):
                    await _relay(sink, rest)
        finally:
            os.close(fd)

    async def _take(self, chunk: bytes, sink: Relay | None, buf: bytearray, mask: Mask) -> None:
        if self.exceeded:
            return
        if self.limit is not None and self.used + len(chunk) > self.limit:
            chunk = chunk[: self.limit - self.used]
            self.exceeded = True
            if not self._ended:
                await self.box.kill_run("OLE")
        self.used += len(chunk)
        if sink is None:
            buf += chunk
        elif shown := mask.feed(chunk):
            await _relay(sink, shown)


async def _relay(sink: Relay, data: bytes) -> None:
    await anyio.to_thread.run_sync(write_all, sink.fd, data)
    sink.ends_line = data.endswith(b"\n")


def _read_buffered(fd: int) -> bytes | None:
    """What a non-blocking pipe or terminal holds now: b"" at EOF, None when it is empty."""
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:
        return None
    except OSError as e:
        if e.errno == errno.EIO:  # a terminal's master once no process holds the terminal: its EOF
            return b""
        raise
