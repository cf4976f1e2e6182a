"""A layer directory as an OCI layer tar: for `sbx image export`, and for a run's upper committed as a layer.

The directory is either a layer of the store (unpacked by image_unpack) or
the upper of a finished run, which the program wrote but no longer writes
(every process of its runs is gone, and so is its box): it is walked without
following a link, and a file is opened only if it is still a regular file.
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

from .image_unpack import OPAQUE, OPAQUE_XATTR, OWNER_XATTR, WHITEOUT_PREFIX


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, uid: int = 0, gid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = len(data), 0o644, uid, gid
    tar.addfile(info, io.BytesIO(data))


def tar_layer(root: str, out: str) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            rel_top = os.path.relpath(top, root)
            if rel_top != "." and _xattr(top, OPAQUE_XATTR) == b"y":
                add_bytes(tar, os.path.join(rel_top, OPAQUE), b"")
            for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
                _add_entry(tar, os.path.join(top, name), os.path.normpath(os.path.join(rel_top, name)))
            for name in dirs:
                path = os.path.join(top, name)
                if not os.path.islink(path):
                    _add_entry(tar, path, os.path.normpath(os.path.join(rel_top, name)))


def _add_entry(tar: tarfile.TarFile, path: str, arcname: str) -> None:
    st = os.lstat(path)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        parent, name = os.path.split(arcname)
        add_bytes(tar, os.path.join(parent, WHITEOUT_PREFIX + name), b"")
        return
    info = tar.gettarinfo(path, arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    owner = _xattr(path, OWNER_XATTR) if not stat.S_ISLNK(st.st_mode) else None
    if owner:
        uid, gid, mode, _ = owner.decode().split(":")
        info.uid, info.gid, info.mode = int(uid), int(gid), stat.S_IMODE(int(mode, 8))
    if info.isreg():
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None
