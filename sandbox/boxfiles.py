"""Copying files into and out of a box's writable dirs, safely against the program, and emptying them.

Box init does the opening, inside the box, with openat2 confined beneath
/box, /tmp or /dev/shm with no symlinks at all (RESOLVE_NO_SYMLINKS also
refuses magic links like /proc/self/fd/N), non-blocking (a planted FIFO
cannot stall it), and only for regular files.  The supervisor then reads or fills the file through
the fd alone, so it never resolves a path the program controls.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat

from . import syscalls as sc
from .mounts import WORK_DIR

_RESOLVE = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
_BASE_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW
WRITABLE_DIRS = (WORK_DIR, "/tmp", "/dev/shm")


def locate(path: str) -> tuple[str, str]:
    """The writable dir holding `path` (a relative path is relative to /box), and the path beneath it."""
    norm = os.path.normpath(path)
    if not norm.startswith("/"):
        if norm == "." or norm == ".." or norm.startswith("../"):
            raise ValueError(f"{path}: not a file under {WORK_DIR}")
        return WORK_DIR, norm
    for root in WRITABLE_DIRS:
        if norm == root or norm.startswith(root + "/"):
            rel = os.path.relpath(norm, root)
            if rel == ".":
                raise ValueError(f"{path}: not a file under {root}")
            return root, rel
    raise ValueError(f"{path}: not under {', '.join(WRITABLE_DIRS[:-1])} or {WRITABLE_DIRS[-1]}")


def _open_beneath(path: str, flags: int, mode: int = 0) -> int:
    """Open `path` in its writable dir, never through a symlink, and only if it is a regular file."""
    root_dir, rel = locate(path)
    root = os.open(root_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = sc.openat2(root, rel, flags | _BASE_FLAGS, mode, _RESOLVE)
    except OSError as e:  # box init names the path: the reason alone, and why a link was refused
        note = " (symlinks in the box are never followed)" if e.errno == errno.ELOOP else ""
        raise OSError(e.errno, os.strerror(e.errno) + note) from None
    finally:
        os.close(root)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return fd


def open_for_reading(path: str) -> int:
    return _open_beneath(path, os.O_RDONLY)


def copy(source: int, target: int, size: int) -> int:
    """Copy up to `size` bytes from the start of `source` to `target`'s position; fewer if `source` ends first."""
    copied = 0
    while copied < size:
        n = os.sendfile(target, source, copied, size - copied)
        if n == 0:
            break
        copied += n
    return copied


def write_from(path: str, source: int, mode: int, uid: int, gid: int) -> None:
    """Create or replace `path` with the contents of the fd `source`, owned by the program's uid."""
    fd = _open_beneath(path, os.O_WRONLY | os.O_CREAT, mode)
    try:
        os.ftruncate(fd, 0)
        copy(source, fd, os.fstat(source).st_size)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def reset() -> None:
    """Empty the box's writable dirs and its System V IPC objects: what one run may leave for the next."""
    for d in WRITABLE_DIRS:
        with os.scandir(d) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            ids = [int(line.split()[1]) for line in f.read().splitlines()[1:]]
        for ident in ids:
            sc.ipc_remove(kind, ident)
