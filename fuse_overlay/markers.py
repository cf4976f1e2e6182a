"""Whiteouts, opaque markers and internal xattr names.

Two on-disk dialects exist in the wild and both are read everywhere:

* kernel overlayfs: a whiteout is a character device 0:0; an opaque
  directory carries ``trusted.overlay.opaque`` or ``user.overlay.opaque``
  = ``y``;
* OCI image layers: a whiteout is a file named ``.wh.NAME``; an opaque
  directory contains ``.wh..wh..opq``.

Writing uses one dialect per mount, chosen by :class:`MarkerWriter`:
``chardev`` (the kernel's ``userxattr`` dialect, so the upper can be reused
by kernel overlayfs) when the host lets an unprivileged user create a 0:0
device (Linux >= 5.8) and set ``user.*`` xattrs, else ``oci``.
"""

import errno
import os
import stat
from typing import Literal

WH_PREFIX = b".wh."
OPAQUE_FILE = b".wh..wh..opq"
OPAQUE_XATTRS = (b"user.overlay.opaque", b"trusted.overlay.opaque")
OWNER_XATTR = b"user.sbx.owner"
HIDDEN_XATTR_PREFIXES = (b"trusted.overlay.", b"user.overlay.", b"user.sbx.")

WhiteoutStyle = Literal["chardev", "oci"]


def is_hidden_xattr(name: bytes) -> bool:
    """Internal bookkeeping must never be seen or forged from inside the box."""
    return name.startswith(HIDDEN_XATTR_PREFIXES)


def is_chardev_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_reserved_name(name: bytes) -> bool:
    """``.wh.*`` names mean whiteouts in OCI layers, so they cannot be files."""
    return name.startswith(WH_PREFIX)


def has_opaque_xattr(path: bytes) -> bool:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return False
    for xname in OPAQUE_XATTRS:
        if xname.decode() in names:
            try:
                if os.getxattr(path, xname, follow_symlinks=False) == b"y":
                    return True
            except OSError:
                continue
    return False


def is_opaque_dir(path: bytes) -> bool:
    return has_opaque_xattr(path) or os.path.lexists(path + b"/" + OPAQUE_FILE)


class MarkerWriter:
    """Writes whiteouts and opaque markers into the upper layer, one dialect."""

    def __init__(self, style: WhiteoutStyle) -> None:
        self.style: WhiteoutStyle = style

    @staticmethod
    def probe(work: bytes) -> WhiteoutStyle:
        """Pick the kernel dialect when this host lets us write it."""
        probe = work + b"/.sbx-probe"
        try:
            os.mknod(probe, stat.S_IFCHR | 0o000, 0)
        except OSError:
            return "oci"
        try:
            os.setxattr(work, OPAQUE_XATTRS[0], b"y")
            os.removexattr(work, OPAQUE_XATTRS[0])
        except OSError:
            return "oci"
        finally:
            os.unlink(probe)
        return "chardev"

    def whiteout(self, dirpath: bytes, name: bytes) -> None:
        if self.style == "chardev":
            os.mknod(dirpath + b"/" + name, stat.S_IFCHR | 0o000, 0)
        else:
            fd = os.open(dirpath + b"/" + WH_PREFIX + name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o000)
            os.close(fd)

    def mark_opaque(self, dirpath: bytes) -> None:
        if self.style == "chardev":
            os.setxattr(dirpath, OPAQUE_XATTRS[0], b"y", follow_symlinks=False)
        else:
            fd = os.open(dirpath + b"/" + OPAQUE_FILE, os.O_CREAT | os.O_WRONLY, 0o000)
            os.close(fd)


def remove_whiteout(dirpath: bytes, name: bytes) -> bool:
    """Drop a whiteout for NAME in either dialect; report whether one existed."""
    removed = False
    path = dirpath + b"/" + name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if is_chardev_whiteout(st):
            os.unlink(path)
            removed = True
    try:
        os.unlink(dirpath + b"/" + WH_PREFIX + name)
        removed = True
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    return removed
