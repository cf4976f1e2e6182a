"""Files into and out of a box's writable dirs: which dir a path is in, from the supervisor's side.

Box init (starter.c) does the opening, inside the box, with openat2
confined beneath /box, /tmp or /dev/shm with no symlinks at all
(RESOLVE_NO_SYMLINKS also refuses magic links like /proc/self/fd/N),
non-blocking (a planted FIFO cannot stall it), and only for regular files.
The supervisor then reads or fills the file through the fd alone, so it
never resolves a path the program controls.
"""

from __future__ import annotations

import os

from .layout import WORK_DIR


def writable_dirs(home: str = WORK_DIR) -> tuple[str, ...]:
    """The box's writable dirs: its home (the working directory, /box unless the layout names another), /tmp and
    /dev/shm."""
    return home, "/tmp", "/dev/shm"


def locate(path: str, home: str = WORK_DIR) -> tuple[str, str]:
    """The writable dir holding `path` (a relative path is relative to `home`), and the path beneath it ("." for
    the dir itself)."""
    norm = os.path.normpath(path)
    if not norm.startswith("/"):
        if norm == ".." or norm.startswith("../"):
            raise ValueError(f"{path}: not a file under {home}")
        return home, norm
    dirs = writable_dirs(home)
    for root in dirs:
        if norm == root or norm.startswith(root + "/"):
            return root, os.path.relpath(norm, root)
    raise ValueError(f"{path}: not under {', '.join(dirs[:-1])} or {dirs[-1]}")


def copy(source: int, target: int, size: int) -> int:
    """Copy up to `size` bytes from the start of `source` to `target`'s position; fewer if `source` ends first."""
    copied = 0
    while copied < size:
        n = os.sendfile(target, source, copied, size - copied)
        if n == 0:
            break
        copied += n
    return copied
