"""A pipe between two runs relayed by the supervisor, keeping what passes through it (go-judge's pipe proxy with a
`name`): an interactive judge can show what the solution and the interactor said to each other.

Without a tap the two programs share a plain kernel pipe and nothing passes
through Python.  With one, each program gets a pipe of its own and a task
copies between them: when the writer's run ends (every process of a run is
killed at its end) the reader gets EOF, and when the reader's run ends the
writer's next write fails (EPIPE), as with a plain pipe.  What is kept is
capped at `limit` bytes (and one); the relay itself goes on past it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import anyio

from .relay import program_pipe

_CHUNK = 1 << 16


@dataclass
class Tap:
    """What passed through one pipe: `exceeded` when more than `limit` bytes did, and then `data` holds one byte
    past the limit (as go-judge keeps it, so that a reader sees it was cut)."""

    limit: int
    data: bytearray = field(default_factory=bytearray)

    @property
    def exceeded(self) -> bool:
        return len(self.data) > self.limit

    def keep(self, chunk: bytes) -> None:
        self.data += chunk[:max(self.limit + 1 - len(self.data), 0)]


def tapped_pipe() -> tuple[tuple[int, int], tuple[int, int]]:
    """Two pipes: the writer's (its write end for the program) and the reader's (its read end for the program);
    the relay gets the other two ends (`relay`)."""
    first = program_pipe()
    try:
        return first, program_pipe()
    except BaseException:
        os.close(first[0])
        os.close(first[1])
        raise


async def relay(source: int, sink: int, tap: Tap) -> None:
    """Copy from the pipe `source` to the pipe `sink` until EOF or until the sink's reader is gone, keeping what
    passes in `tap`; both fds are closed at the end."""
    os.set_blocking(source, False)
    os.set_blocking(sink, False)
    try:
        while True:
            try:
                chunk = os.read(source, _CHUNK)
            except BlockingIOError:
                await anyio.wait_readable(source)
                continue
            if not chunk:
                return
            tap.keep(chunk)
            view = memoryview(chunk)
            while view:
                try:
                    view = view[os.write(sink, view):]
                except BlockingIOError:
                    await anyio.wait_writable(sink)
                except BrokenPipeError:
                    return
    finally:
        os.close(source)
        os.close(sink)
