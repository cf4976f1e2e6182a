"""An upper dir has one writer: the flocks that make a sandbox its only one, and the overlaps that are refused;
and what of a finished run's upper is box init's, not the program's."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from . import fdpath
from .errors import ConfigError


def apart(upper: str, others: list[tuple[str, str]]) -> None:
    """The upper may not be inside a layer or a bind, nor hold one: the box would reach the upper's own files."""
    for flag, path in others:
        if os.path.commonpath([upper, path]) in (upper, path):
            raise ConfigError(f"--upper {upper}: overlaps {flag} {path} (one may not be inside the other)")


def lock_upper(upper: str) -> list[int]:
    """Flocks that make this sandbox the upper's only writer: exclusive on the upper, shared on each dir above it.

    A second sandbox on the same upper, or on one inside or around it, would be
    a second writer: one box's program could swap a directory for a link that
    the other's daemon then writes through.  The shared locks on the dirs above
    meet the exclusive lock of an upper there.  The FUSE daemon inherits the
    fds, so the locks last until it is gone, even if the supervisor is killed.
    Dirs above that the caller cannot read are passed over.
    """
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(upper, fdpath.DIR))
        except OSError as e:
            raise ConfigError(f"--upper {upper}: {e.strerror}") from None
        _flock(fds[0], fcntl.LOCK_EX, upper, "in use by another sandbox")
        above = upper
        while above != "/":
            above = os.path.dirname(above)
            try:
                fds.append(os.open(above, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            except OSError:
                continue
            _flock(fds[-1], fcntl.LOCK_SH, upper, f"inside {above}, the upper of another sandbox")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _flock(fd: int, how: int, upper: str, conflict: str) -> None:
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"--upper {upper}: {conflict} (an upper has one writer at a time)") from None
        raise ConfigError(f"--upper {upper}: cannot lock it: {e.strerror}") from None


def leave_out_mount_points(upper: str, points: list[str]) -> None:
    """Remove from a finished run's upper what box init made there only to mount over it (plan.mount_points): an
    empty dir or file at a mount point that the image had no entry for (/box, /run/secrets, a volume's path).  The
    program could not write below a mount, so such an entry is box init's; through fds, following no link."""
    for point in points:
        *parents, last = point.strip("/").split("/")
        fds = [os.open(upper, fdpath.DIR)]
        try:
            for name in parents:
                fds.append(os.open(name, fdpath.DIR, dir_fd=fds[-1]))
            parent = fds[-1]
            st = os.stat(last, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fds.append(os.open(last, fdpath.DIR, dir_fd=parent))
                if not os.listdir(fds[-1]):
                    os.rmdir(last, dir_fd=parent)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(last, dir_fd=parent)
        except OSError:
            continue  # not there (the image had it), or not box init's to take back
        finally:
            for fd in fds:
                os.close(fd)
