"""An image of the store written as an OCI image layout tar, which skopeo, umoci and podman read.

Each layer is tarred again from its unpacked directory (gzip): 0:0 character
devices become `.wh.NAME` whiteouts, `user.overlay.opaque` a `.wh..wh..opq`
entry, and the owners and modes recorded in `user.sbx.owner` go back into the
headers.  A tar is not byte-reproducible, so the exported layers have digests
of their own, and the exported config names them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from typing import Any

from .image_store import Store, parse_ref
from .image_unpack import OPAQUE, OPAQUE_XATTR, OWNER_XATTR, WHITEOUT_PREFIX


def export(store: Store, ref: str, out: str) -> None:
    ref = parse_ref(ref)
    image, pins = store.pin(ref)
    try:
        with tempfile.TemporaryDirectory(prefix=".sbx-export-", dir=os.path.dirname(os.path.abspath(out))) as work:
            blobs: dict[str, str] = {}

            def put(path: str) -> tuple[str, int]:
                sha = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        sha.update(chunk)
                digest = "sha256:" + sha.hexdigest()
                blobs[digest] = path
                return digest, os.path.getsize(path)
            layers, diff_ids = [], []
            for i, diff_id in enumerate(image.diff_ids):
                plain, packed = os.path.join(work, f"{i}.tar"), os.path.join(work, f"{i}.tar.gz")
                _tar_layer(os.path.join(store.layer_dir(diff_id), "root"), plain)
                diff_ids.append(put(plain)[0])
                del blobs[diff_ids[-1]]  # only the gzip goes into the layout
                with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                digest, size = put(packed)
                layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                               "size": size})
            config = {**image.config, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
            config_desc = _json_blob(work, "config", config, put, "application/vnd.oci.image.config.v1+json")
            manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": config_desc, "layers": layers}
            manifest_desc = _json_blob(work, "manifest", manifest, put, "application/vnd.oci.image.manifest.v1+json")
            manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}
            _write_layout(out, blobs, {"schemaVersion": 2, "manifests": [manifest_desc]})
    finally:
        for fd in pins:
            os.close(fd)


def _json_blob(work: str, name: str, doc: dict[str, Any], put: Any, media_type: str) -> dict[str, Any]:
    path = os.path.join(work, name)
    with open(path, "wb") as f:
        f.write(json.dumps(doc, sort_keys=True).encode())
    digest, size = put(path)
    return {"mediaType": media_type, "digest": digest, "size": size}


def _write_layout(out: str, blobs: dict[str, str], index: dict[str, Any]) -> None:
    """The layout's files are the caller's, with their directories: a rootless reader (skopeo) chowns what it
    unpacks to the owners in the headers, which only the caller's own ids allow."""
    tmp = f"{out}.{os.getpid()}.tmp"
    mine = {"uid": os.getuid(), "gid": os.getgid()}
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', **mine)
        _add_bytes(tar, "index.json", json.dumps(index).encode(), **mine)
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, mine["uid"], mine["gid"]
            tar.addfile(info)
        for digest, path in sorted(blobs.items()):
            tar.add(path, arcname=f"blobs/sha256/{digest.split(':', 1)[1]}", recursive=False)
    os.rename(tmp, out)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, uid: int = 0, gid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid = len(data), 0o644, uid, gid
    tar.addfile(info, io.BytesIO(data))


def _tar_layer(root: str, out: str) -> None:
    """The layer directory (sbx's own: unpacked by image_unpack, no link followed) as an OCI layer tar."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, files in os.walk(root, followlinks=False):
            dirs.sort()
            rel_top = os.path.relpath(top, root)
            if rel_top != "." and _xattr(top, OPAQUE_XATTR) == b"y":
                _add_bytes(tar, os.path.join(rel_top, OPAQUE), b"")
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
        _add_bytes(tar, os.path.join(parent, WHITEOUT_PREFIX + name), b"")
        return
    info = tar.gettarinfo(path, arcname)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    owner = _xattr(path, OWNER_XATTR) if not stat.S_ISLNK(st.st_mode) else None
    if owner:
        uid, gid, mode, _ = owner.decode().split(":")
        info.uid, info.gid, info.mode = int(uid), int(gid), stat.S_IMODE(int(mode, 8))
    if info.isreg():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _xattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None
