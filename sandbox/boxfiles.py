"""Copying files into and out of a box's work dir, safely against the program, and emptying it.

Box init does the opening, inside the box, with openat2 confined beneath
/box with no symlinks at all (RESOLVE_NO_SYMLINKS also refuses magic links
like /proc/self/fd/N), non-blocking (a planted FIFO cannot stall it), and
only for regular files.  The supervisor then reads or fills the file through
the fd alone, so it never resolves a path the program controls.
"""

from __future__ import annotations

import os
import shutil
import stat

from . import syscalls as sc
from .mounts import WORK_DIR

_RESOLVE = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
_BASE_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | os.O_NOFOLLOW


def relative(path: str) -> str:
    """A path relative to /box; absolute paths must lie under /box."""
    norm = os.path.normpath(path)
    if norm.startswith("/"):
        if norm != WORK_DIR and not norm.startswith(WORK_DIR + "/"):
            raise ValueError(f"{path}: not under {WORK_DIR}")
        norm = os.path.relpath(norm, WORK_DIR)
    if norm in (".", "") or norm.startswith(".."):
        raise ValueError(f"{path}: not a file under {WORK_DIR}")
    return norm


def _regular(fd: int, path: str) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(f"{path}: not a regular file")
    return fd


def open_for_reading(path: str) -> int:
    rel = relative(path)
    root = os.open(WORK_DIR, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _regular(sc.openat2(root, rel, os.O_RDONLY | _BASE_FLAGS, 0, _RESOLVE), path)
    finally:
        os.close(root)


def write_from(path: str, source: int, mode: int, uid: int, gid: int) -> None:
    """Create or replace `path` with the contents of the fd `source`, owned by the program's uid."""
    rel = relative(path)
    root = os.open(WORK_DIR, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _regular(sc.openat2(root, rel, os.O_WRONLY | os.O_CREAT | _BASE_FLAGS, mode, _RESOLVE), path)
    finally:
        os.close(root)
    try:
        os.ftruncate(fd, 0)
        size = os.fstat(source).st_size
        copied = 0
        while copied < size:
            n = os.sendfile(fd, source, copied, size - copied)
            if n == 0:
                break
            copied += n
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


WRITABLE_DIRS = (WORK_DIR, "/tmp", "/dev/shm")


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
