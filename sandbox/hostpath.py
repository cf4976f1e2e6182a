"""Host paths the caller names, resolved through fds and only through links the caller or root own.

A path the caller gives sbx (`--bind SRC`, `--copy-in SRC`, `--copy-out DST`,
`--upper`, `--lower`, `--stdin`, `--json`, a Bind of the API) may run through
a directory that a program could write: a writable bind, a kept upper, a
directory an earlier run wrote through one.  A link planted there would carry
the caller's authority somewhere the caller never named: a copy-out into a
private directory, a copy-in of a secret, a bind of `~/.ssh`.  So the path is
walked here one component at a time, on fds, and a link is followed only if

* the caller or root owns it, as `fs.protected_symlinks` asks in sticky
  directories (a program's links belong to its subordinate uid);
* and it is not inside a directory the box can write (`Guard`): there no link
  is followed at all, whoever owns it, because with the single id mapping
  the program's links are the caller's own, and in any mapping the program
  can rename a link of the caller's that lies there.

The kernel's own links in /proc (`/dev/stdin` -> `/proc/self/fd/0`) are
followed by the kernel: they name an open file, not a path, and only the
caller's own processes' are there to follow.

What the walk yields is an `O_PATH` fd: the caller reads, lists or writes
relative to it, so nothing a program does after the walk changes what it is.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Self

from . import fdpath
from . import syscalls as sc
from .errors import ConfigError
from .record import Record, field

MAX_LINKS = 40
"""Links followed in one path, as the kernel's own limit (ELOOP past it)."""


class UnsafePath(ConfigError):
    """A caller's path runs through a link that sbx will not follow; the message names the link."""


class Guard(Record):
    """Host directories a box can write, by identity (st_dev, st_ino): no link is followed below them."""

    dirs: frozenset[tuple[int, int]] = field(default_factory=frozenset)


class _Closing:
    """`with` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostPath(_Closing, Record, frozen=False):
    """What a caller's path names, open as an O_PATH fd (the owner closes it), and where it is, link-free."""

    fd: int
    path: str
    """Absolute, without links or dot-dots; for messages and for finding it again (box init, overlay options)."""

    @property
    def identity(self) -> tuple[int, int]:
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def reopen(self, flags: int) -> int:
        """A real open file description of the same file (read, write), never of another."""
        return os.open(f"/proc/self/fd/{self.fd}", flags | os.O_CLOEXEC)


def resolve(path: str, what: str, guard: Guard = Guard()) -> HostPath:
    """Walk `path` (relative ones from the working directory) as the module says; `what` starts each error line.

    Raises UnsafePath for a link it will not follow, ConfigError for a path
    that does not resolve (missing, not a directory on the way, too many links).
    """
    if not path:
        raise ConfigError(f"{what}: empty path")
    if "\0" in path:
        raise ConfigError(f"{what} {path!r}: a path cannot hold a NUL byte")
    start = "/" if path.startswith("/") else os.getcwd()
    try:
        return _walk(start, path, what, guard)
    except OSError as e:
        raise ConfigError(f"{what} {path}: {e.strerror or e}") from None


def resolve_parent(path: str, what: str, guard: Guard = Guard()) -> tuple[HostPath, str]:
    """The directory that would hold `path`'s last component, and that name (which need not exist yet)."""
    head, name = os.path.split(path.rstrip("/") or "/")
    if name in ("", ".", ".."):
        raise ConfigError(f"{what} {path}: names no file")
    return resolve(head or ".", what, guard), name


def _walk(start: str, path: str, what: str, guard: Guard) -> HostPath:
    current = os.open(start, fdpath.PATH_DIR)
    where = [part for part in start.split("/") if part]
    guarded = _guarded(current, guard)
    todo = [part for part in reversed(path.split("/")) if part not in ("", ".")]
    links = 0
    try:
        while todo:
            part = todo.pop()
            if part == "..":
                parent = os.open("..", fdpath.PATH_DIR, dir_fd=current)
                os.close(current)
                current = parent
                where = where[:-1]
                guarded = guarded or _guarded(current, guard)
                continue
            below = os.open(part, fdpath.PATH, dir_fd=current)
            st = os.fstat(below)
            if not stat.S_ISLNK(st.st_mode):
                if todo and not stat.S_ISDIR(st.st_mode):
                    os.close(below)
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                os.close(current)
                current = below
                where.append(part)
                guarded = guarded or _guarded(current, guard)
                continue
            try:
                shown = "/" + "/".join([*where, part])
                _check_link(shown, st, guarded, what)
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                if sc.fs_type(current) == sc.PROC_SUPER_MAGIC:
                    # the kernel's link to an open file: it follows it, and it has no path to walk
                    followed = os.open(part, os.O_PATH | os.O_CLOEXEC, dir_fd=current)
                    os.close(current)
                    current = followed
                    where = [p for p in os.readlink(f"/proc/self/fd/{current}").split("/") if p]
                    continue
                target = os.readlink("", dir_fd=below)
            finally:
                os.close(below)
            todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
            if target.startswith("/"):
                os.close(current)
                current = os.open("/", fdpath.PATH_DIR)
                where = []
    except BaseException:
        os.close(current)
        raise
    return HostPath(current, "/" + "/".join(where))


def _guarded(fd: int, guard: Guard) -> bool:
    if not guard.dirs:
        return False
    return fdpath.identity(fd) in guard.dirs


def _check_link(shown: str, st: os.stat_result, guarded: bool, what: str) -> None:
    if guarded:
        raise UnsafePath(f"{what}: {shown} is a link inside a directory the box can write; links there are "
                         "never followed")
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafePath(f"{what}: {shown} is a link owned by uid {st.st_uid}; only links of the caller's or "
                         "root's are followed")


class OutputFile(_Closing):
    """A file the caller names for sbx to write after a run (`--json FILE`), placed before the run.

    Its directory is resolved now; the file is made or truncated only when
    written, relative to that directory and never through a link: one the
    program put there meanwhile is an error, not a way out.  A name that is
    already the caller's own link or not a regular file (`/dev/stderr`, a
    FIFO) is opened now, as it is.
    """

    def __init__(self, path: str, what: str, guard: Guard = Guard()) -> None:
        self.path, self._what = path, what
        self._dir, self._name = resolve_parent(path, what, guard)
        self._fd = -1
        try:
            st = os.stat(self._name, dir_fd=self._dir.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as e:
            self.close()
            raise ConfigError(f"{what} {path}: {e.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            return
        try:
            with resolve(path, what, guard) as found:
                self._fd = found.reopen(os.O_WRONLY)
        except OSError as e:
            self.close()
            raise ConfigError(f"{what} {path}: {e.strerror}") from None
        except BaseException:
            self.close()
            raise

    def write(self, data: bytes) -> None:
        try:
            if self._fd < 0:
                self._fd = os.open(self._name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                                   0o666, dir_fd=self._dir.fd)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            raise ConfigError(f"{self._what} {self.path}: {e.strerror}") from None

    def close(self) -> None:
        self._dir.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
