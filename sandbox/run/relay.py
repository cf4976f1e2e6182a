"""Where a program's output goes as it comes: through a pipe, to a caller's fd, written in full (no event loop)."""

from __future__ import annotations

import os

from ..record import Record


class Relay(Record, frozen=False):
    """Stream a program's output to this fd as it comes, counted against the output limit.

    `ends_line` says whether what was relayed so far ends a line, so that a
    caller writing after the program to the same fd can start a new one.
    """

    fd: int
    ends_line: bool = True


def write_all(fd: int, data: bytes) -> None:
    """Blocking writes, in a worker thread for a caller's fd (a terminal, a pipe must stay in blocking mode)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return


def program_pipe() -> tuple[int, int]:
    """A pipe (read end, write end) that a program gets an end of: it may reopen it through /proc/self/fd (as
    /dev/stdout, /dev/stdin), so the pipe is not only for the uid that made it (the supervisor's).  Only a
    process that holds an end can reach it that way."""
    read, write = os.pipe2(os.O_CLOEXEC)
    os.fchmod(write, 0o666)
    return read, write
