"""A detached box's log: what its program printed, bounded, with the times it came at.

The monitor appends the program's output (already masked) to DIR/log, and to DIR/log.idx a 16-byte mark
(when, as seconds since the epoch; where, as the log's offset) before the first bytes of each RESOLUTION: the
bytes from a mark's offset to the next mark's came at or after its time and before the next mark's.  At
LOG_SIZE of output, or MARKS marks (a program that prints a little at a time makes a mark for each), both are
moved to log.1 and log.1.idx (replacing them): at most twice LOG_SIZE of output and twice MARKS marks on disk.

`sbx logs --since T` starts at the first mark at or after T: what came in the RESOLUTION before it is left out.
"""

from __future__ import annotations

import datetime
import os
import re
import struct
import time
from typing import BinaryIO

from ..errors import ConfigError

LOG_SIZE = 8 * 2**20
MARKS = 65536
RESOLUTION = 0.01
_MARK = struct.Struct("<dQ")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|ms|s|m|h)")
_DURATIONS = re.compile(rf"(?:{_DURATION.pattern})+")

Position = tuple[int, int]
"""(inode, offset) of a log read so far."""


class Writer:
    """The monitor's side: append, mark, rotate."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._last_mark = float("-inf")
        self._open()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self._log = os.open(os.path.join(self._path, "log"), flags, 0o600)
        self._index = os.open(os.path.join(self._path, "log.idx"), flags, 0o600)
        self._size = os.fstat(self._log).st_size
        self._marks = os.fstat(self._index).st_size // _MARK.size

    def write(self, data: bytes) -> None:
        now = time.time()
        if now - self._last_mark >= RESOLUTION:
            os.write(self._index, _MARK.pack(now, self._size))
            self._last_mark = now
            self._marks += 1
        os.write(self._log, data)
        self._size += len(data)
        if self._size >= LOG_SIZE or self._marks >= MARKS:
            self.close()
            for name in ("log", "log.idx"):
                os.rename(os.path.join(self._path, name), os.path.join(self._path, name.replace("log", "log.1", 1)))
            self._last_mark = float("-inf")
            self._open()

    def close(self) -> None:
        os.close(self._log)
        os.close(self._index)


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`'s value, as docker takes it: a duration back from now (10m, 1h30m, 2.5s), seconds since the epoch,
    or an RFC 3339 / ISO 8601 time (local time unless it names its zone)."""
    now = time.time() if now is None else now
    if _DURATIONS.fullmatch(text):
        return now - sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(f"--since {text!r}: expected a duration (10m, 1h30m), seconds since the epoch, or a time "
                          f"such as 2026-12-07T15:04:05Z") from None


def since(path: str, when: float) -> tuple[str, int]:
    """Where output from `when` on starts: ("log.1", offset) or ("log", offset)."""
    for name in ("log.1", "log"):
        try:
            with open(os.path.join(path, f"{name}.idx"), "rb") as f:
                marks = f.read()
        except FileNotFoundError:
            continue
        for at, offset in _MARK.iter_unpack(marks[:len(marks) - len(marks) % _MARK.size]):
            if at >= when:
                return name, offset
    return "log", end(path)[1]


def copy(path: str, start: tuple[str, int], out: BinaryIO) -> Position:
    """The log from `start` on (log.1's rest first, if it starts there), and where it ended."""
    name, offset = start
    if name == "log.1":
        try:
            with open(os.path.join(path, "log.1"), "rb") as old:
                old.seek(offset)
                out.write(old.read())
        except FileNotFoundError:
            pass
        offset = 0
    return copy_new(path, (0, offset), out)


def end(path: str) -> Position:
    """Where the log ends now."""
    try:
        st = os.stat(os.path.join(path, "log"))
        return st.st_ino, st.st_size
    except FileNotFoundError:
        return 0, 0


def copy_new(path: str, where: Position, out: BinaryIO) -> Position:
    """What the log gained since `where`; after a rotation, the rest of the old one (log.1) and the new one."""
    inode, offset = where
    try:
        f = open(os.path.join(path, "log"), "rb")
    except FileNotFoundError:
        return where
    with f:
        st = os.fstat(f.fileno())
        if st.st_ino != inode and inode:
            try:
                with open(os.path.join(path, "log.1"), "rb") as old:
                    if os.fstat(old.fileno()).st_ino == inode:
                        old.seek(offset)
                        out.write(old.read())
            except FileNotFoundError:
                pass
            offset = 0
        f.seek(offset)
        data = f.read()
        out.write(data)
        out.flush()
        return st.st_ino, offset + len(data)
