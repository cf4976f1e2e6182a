"""How sbx opens what lies in a tree it does not own: relative to a directory fd, one name at a time, never
through a link.

Every walker opens through these flags and helpers: the removal of a
box's scratch (teardown.py), copies in and out (copies.py), the caller's
host paths (hostpath.py), layers unpacked, tarred and pinned
(images/unpack.py, images/tar.py, images/store.py), a scratch dir and an
upper (scratch.py, upper.py).  A name that is a link fails to open
(ELOOP or ENOTDIR) rather than being followed; an fd, once open, names
that object whatever is renamed around it later; and `identity` is how a
walker checks it still has the object it meant.
"""

from __future__ import annotations

import os

DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""A directory to list or to open names in."""
PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
"""Any object, without opening it for I/O (a link itself, a FIFO, a directory with no read access)."""
PATH_DIR = PATH | os.O_DIRECTORY
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""A file to read: a FIFO planted there does not block the open."""
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""A new file: nothing already there, a link included, is opened or written through."""


def identity(fd: int) -> tuple[int, int]:
    """(st_dev, st_ino) of what `fd` is open on."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def make_dir(parent: int, name: str, mode: int) -> tuple[int, bool]:
    """An fd of the directory `name` in `parent`, made (with `mode`) if missing, and whether it was made; a link
    there fails with ELOOP, anything else that is not a directory with ENOTDIR."""
    try:
        os.mkdir(name, mode, dir_fd=parent)
        made = True
    except FileExistsError:
        made = False
    return os.open(name, DIR, dir_fd=parent), made


def names(fd: int) -> list[str]:
    """The names in the directory open as `fd`, sorted (a walk's order does not depend on the filesystem's)."""
    return sorted(os.listdir(fd))
