"""Host dirs that a sandbox makes for its union (a scratch upper, a work dir), and those a killed sbx left.

Each is flocked from the moment it has its name until the sandbox and its
FUSE daemon are gone (the daemon inherits the lock).  A supervisor killed
with SIGKILL cannot remove its dirs, so the next sandbox that makes one in the
same place removes every dir of the same kind whose lock is free: nobody
uses it.  A dir is made under a hidden name and renamed once locked, so that
no cleaner can mistake a dir being made for an abandoned one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import warnings
from collections.abc import Iterator

from . import fdpath, teardown
from .teardown import TeardownWarning


def make(parent: str, prefix: str, shared: bool = False) -> tuple[str, int]:
    """A new dir `parent/prefixXXXX`, and the fd that holds its lock; abandoned `prefix*` dirs go first.

    `shared`: the lock is a shared one, which the shared locks an upper takes on the dirs above it (upper.py) do
    not conflict with: for a dir that holds uppers."""
    remove_abandoned(parent, prefix)
    making = tempfile.mkdtemp(prefix=f".making-{prefix}", dir=parent)
    fd = os.open(making, fdpath.DIR)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        path = os.path.join(parent, prefix + os.path.basename(making)[len(f".making-{prefix}"):])
        os.rename(making, path)
    except BaseException:
        os.close(fd)
        os.rmdir(making)
        raise
    return path, fd


@contextlib.contextmanager
def workdir(parent: str, prefix: str, shared: bool = False) -> Iterator[str]:
    """A dir from `make` for the length of a `with`, then removed (only that very dir) and unlocked."""
    path, lock = make(parent, prefix, shared)
    made = teardown.identity(path)
    try:
        yield path
    finally:
        teardown.remove_tree(path, made)
        os.close(lock)


def remove_abandoned(parent: str, prefix: str) -> None:
    """Remove the caller's `prefix*` dirs in `parent` that no live sandbox holds (never through a link)."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        try:
            fd = os.open(path, fdpath.DIR)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue  # in use
                raise
            left = teardown.remove_tree(path, (st.st_dev, st.st_ino))
            if left:
                warnings.warn(TeardownWarning(f"could not remove all of {path}, left by a killed sbx: "
                                              + "; ".join(left)), stacklevel=2)
        finally:
            os.close(fd)
