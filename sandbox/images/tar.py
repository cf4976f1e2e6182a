"""A layer directory as an OCI layer tar: for `sbx image export`, and for a run's upper committed as a layer.

The directory is either a layer of the store (unpacked by unpack.py) or
the upper of a finished run, which the program wrote but no longer writes
(every process of its runs is gone, and so is its box): it is walked through
directory fds without following a link, and an entry is opened only as the
kind it was found to be.
0:0 character devices and `.wh.NAME` files become OCI whiteouts,
`user.overlay.opaque` a `.wh..wh..opq` entry, and the owners and modes in
`user.sbx.owner` (the FUSE union's record of what the host cannot hold) go
into the headers; other owners are root's.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator

from .. import fdpath
from ..errors import ConfigError
from .unpack import OPAQUE, OPAQUE_XATTR, OWNER_XATTR, WHITEOUT_PREFIX


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, uid: int = 0, gid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = len(data), 0o644, uid, gid
    tar.addfile(info, io.BytesIO(data))


MAX_DEPTH = 512
"""Directories deeper than this are refused: the walk keeps one fd open per level."""


def tar_layer(root: str, out: str, where: str, merged: bool = False) -> None:
    """Write the layer dir `root` as a tar to `out`, walking it through fds only, never through a link.

    `merged`: `root` is a union's merged view (a box's export), read through the FUSE union: owners and modes are
    what it shows, and there are no whiteouts in it."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        links: dict[tuple[int, int], str] = {}
        stack: list[tuple[int, str, Iterator[str]]] = []
        try:
            fd = os.open(root, fdpath.DIR)
            stack.append((fd, "", iter(fdpath.names(fd))))
            while stack:
                parent, rel, names = stack[-1]
                name = next(names, None)
                if name is None:
                    os.close(stack.pop()[0])
                    continue
                child = _add_entry(tar, parent, name, f"{rel}{name}", links, merged)
                if child is not None:
                    if len(stack) >= MAX_DEPTH:
                        os.close(child)
                        raise ConfigError(f"{where}: directories nested deeper than {MAX_DEPTH} (a layer's limit)")
                    stack.append((child, f"{rel}{name}/", iter(fdpath.names(child))))
        finally:
            for fd, _, _ in stack:
                os.close(fd)


def _add_entry(tar: tarfile.TarFile, parent: int, name: str, arcname: str,
               links: dict[tuple[int, int], str], merged: bool = False) -> int | None:
    """Add one entry of the dir `parent`; returns an fd of it if it is a directory, to walk next."""
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    info = tarfile.TarInfo(arcname)
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if merged:
        info.uid, info.gid = st.st_uid, st.st_gid
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and not merged:
        head, base = os.path.split(arcname)
        add_bytes(tar, os.path.join(head, WHITEOUT_PREFIX + base), b"")
        return None
    if stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=parent)
        tar.addfile(info)
        return None
    if stat.S_ISDIR(st.st_mode):
        kind, flags = tarfile.DIRTYPE, fdpath.DIR
    elif stat.S_ISREG(st.st_mode):
        kind, flags = tarfile.REGTYPE, fdpath.READ
    elif stat.S_ISFIFO(st.st_mode):
        kind, flags = tarfile.FIFOTYPE, fdpath.READ
    else:
        return None  # a socket or device node: nothing a layer may hold
    fd = os.open(name, flags, dir_fd=parent)
    try:
        if fdpath.identity(fd) != (st.st_dev, st.st_ino):
            raise ConfigError(f"{arcname}: changed while it was read")
        info.type = kind
        owner = None if merged else _xattr(fd, OWNER_XATTR)
        if owner:
            uid, gid, mode, _ = owner.decode().split(":")
            info.uid, info.gid, info.mode = int(uid), int(gid), stat.S_IMODE(int(mode, 8))
        if kind == tarfile.DIRTYPE:
            tar.addfile(info)
            if not merged and _xattr(fd, OPAQUE_XATTR) == b"y":
                add_bytes(tar, f"{arcname}/{OPAQUE}", b"")
            fd, kept = -1, fd
            return kept
        if kind == tarfile.REGTYPE and st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[(st.st_dev, st.st_ino)]
            tar.addfile(info)
        elif kind == tarfile.REGTYPE:
            links[(st.st_dev, st.st_ino)] = arcname
            info.size = st.st_size
            with os.fdopen(os.dup(fd), "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _xattr(fd: int, name: str) -> bytes | None:
    try:
        return os.getxattr(fd, name)
    except OSError:
        return None
