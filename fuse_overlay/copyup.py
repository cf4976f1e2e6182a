"""Copying lower objects into the upper.

Everything is built under the work directory (same filesystem as the
upper) and renamed into place as the last step, so a crash leaves either
the old lower object or the complete copy, never a half-written file.
"""

import contextlib
import errno
import itertools
import os
import shutil
import stat

from .markers import OPAQUE_FILE, is_hidden_xattr
from .ownership import host_mode
from .quota import Quota, object_bytes, xattr_bytes

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
        """Delete a directory and its subtree after moving it here, refunding the quota of each name.

        An object's bytes go back with its last name (a file linked from
        outside the tree keeps them).
        """
        tmp = self.temp()
        os.rename(path, tmp)
        for dirpath, dirnames, filenames in os.walk(tmp, topdown=False):
            for name in filenames + dirnames:
                _remove_charged(os.path.join(dirpath, name), quota)
        _remove_charged(tmp, quota)


def _remove_charged(path: bytes, quota: Quota) -> None:
    st = os.lstat(path)
    last = stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1
    nbytes = object_bytes(path, st) if last else 0
    if stat.S_ISDIR(st.st_mode):
        os.rmdir(path)
    else:
        os.unlink(path)
    if os.path.basename(path) != OPAQUE_FILE:
        quota.charge_inode(-1)
    quota.charge_bytes(-nbytes)


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
    The copy is charged like anything the box makes: a name, the size of a
    file or a symlink's target, and the extended attributes it carries over.
    """
    mode = st.st_mode
    size = st.st_size if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else 0
    quota.check_bytes(size)
    quota.charge_inode(1)
    quota.used_bytes += size
    made = False
    try:
        if stat.S_ISDIR(mode):
            os.mkdir(tmp, host_mode(mode))
            made = True
        elif stat.S_ISREG(mode):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, host_mode(mode))
            made = True
            try:
                _copy_data(src, fd, st.st_size)
                os.fchmod(fd, host_mode(mode))
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), tmp)
            made = True
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            os.mknod(tmp, stat.S_IFMT(mode) | stat.S_IMODE(mode))
            made = True
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            made = True
            os.close(fd)
        if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
            copy_xattrs(src, tmp)
            quota.charge_bytes(xattr_bytes(tmp))
    except BaseException:
        quota.charge_inode(-1)
        quota.charge_bytes(-size)
        if made:
            with contextlib.suppress(OSError):
                (os.rmdir if stat.S_ISDIR(mode) else os.unlink)(tmp)
        raise


def publish(tmp: bytes, dest: bytes, parent: bytes) -> None:
    """Move a finished object into the upper without touching the parent's times.

    Copy-up is invisible in the merged view, so the parent's mtime must not
    move because of it.
    """
    pst = os.lstat(parent)
    os.rename(tmp, dest)
    os.utime(parent, ns=(pst.st_atime_ns, pst.st_mtime_ns))
