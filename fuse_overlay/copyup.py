"""Copying lower objects into the upper.

Everything is built under the work directory (same filesystem as the
upper) and renamed into place as the last step, so a crash leaves either
the old lower object or the complete copy, never a half-written file.
"""

import errno
import itertools
import os
import shutil
import stat

from .markers import is_hidden_xattr
from .ownership import host_mode
from .quota import Quota

_CHUNK = 1 << 24


class WorkDir:
    """Private scratch directory inside the user's work dir."""

    def __init__(self, path: bytes) -> None:
        self.path = path
        self._counter = itertools.count()

    def temp(self) -> bytes:
        return b"%s/t%d" % (self.path, next(self._counter))

    def purge(self) -> None:
        """Remove what a crashed mount left behind."""
        with os.scandir(self.path) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)

    def discard_tree(self, path: bytes, quota: Quota) -> None:
        """Delete a subtree after moving it here, refunding its quota."""
        tmp = self.temp()
        os.rename(path, tmp)
        seen: set[tuple[int, int]] = set()
        for dirpath, dirnames, filenames in os.walk(tmp, topdown=False):
            for name in filenames + dirnames:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(full)
                else:
                    os.unlink(full)
                if (st.st_dev, st.st_ino) not in seen and (stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1):
                    seen.add((st.st_dev, st.st_ino))
                    quota.charge_inode(-1)
                    if stat.S_ISREG(st.st_mode):
                        quota.charge_bytes(-st.st_size)
        os.rmdir(tmp)


def _copy_data(src: bytes, dst_fd: int, size: int) -> None:
    src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        copied = 0
        while copied < size:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(_CHUNK, size - copied))
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                n = os.sendfile(dst_fd, src_fd, None, min(_CHUNK, size - copied))
            if n == 0:
                break
            copied += n
    finally:
        os.close(src_fd)


def copy_xattrs(src: bytes, dst: bytes) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if is_hidden_xattr(name.encode()):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as exc:
            # security.* and similar may be refused to an unprivileged daemon.
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.ENODATA):
                raise


def copy_object(src: bytes, st: os.stat_result, tmp: bytes, quota: Quota) -> None:
    """Create at TMP a copy of SRC (not its times or owner: the caller sets those).

    Device nodes become empty regular files; the caller records their real
    type in the owner override, since the host will not let us mknod them.
    """
    mode = st.st_mode
    quota.charge_inode(1)
    try:
        if stat.S_ISDIR(mode):
            os.mkdir(tmp, host_mode(mode))
        elif stat.S_ISREG(mode):
            quota.charge_bytes(st.st_size)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, host_mode(mode))
            try:
                _copy_data(src, fd, st.st_size)
                os.fchmod(fd, host_mode(mode))
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), tmp)
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            os.mknod(tmp, stat.S_IFMT(mode) | stat.S_IMODE(mode))
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
    except BaseException:
        quota.charge_inode(-1)
        if stat.S_ISREG(mode):
            quota.charge_bytes(-st.st_size)
        raise
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        copy_xattrs(src, tmp)


def publish(tmp: bytes, dest: bytes, parent: bytes) -> None:
    """Move a finished object into the upper without touching the parent's times.

    Copy-up is invisible in the merged view, so the parent's mtime must not
    move because of it.
    """
    pst = os.lstat(parent)
    os.rename(tmp, dest)
    os.utime(parent, ns=(pst.st_atime_ns, pst.st_mtime_ns))
