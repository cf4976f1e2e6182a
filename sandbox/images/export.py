"""An image of the store written as an OCI image layout tar, which skopeo, umoci and podman read.

Each layer is tarred again from its unpacked directory (tar.py) and
gzipped.  A tar is not byte-reproducible, so the exported layers have digests
of their own, and the exported config names them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from typing import Any

from .store import Store, parse_ref, with_history
from .tar import add_bytes, tar_layer


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
            for i, chain in enumerate(image.chain_ids):
                plain, packed = os.path.join(work, f"{i}.tar"), os.path.join(work, f"{i}.tar.gz")
                tar_layer(os.path.join(store.layer_dir(chain), "root"), plain, f"layer {i + 1} ({chain})")
                diff_ids.append(put(plain)[0])
                del blobs[diff_ids[-1]]  # only the gzip goes into the layout
                with open(plain, "rb") as src, gzip.open(packed, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                digest, size = put(packed)
                layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                               "size": size})
            config = with_history({**image.config, "rootfs": {"type": "layers", "diff_ids": diff_ids}}, len(diff_ids))
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
        add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', **mine)
        add_bytes(tar, "index.json", json.dumps(index).encode(), **mine)
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, mine["uid"], mine["gid"]
            tar.addfile(info)
        for digest, path in sorted(blobs.items()):
            tar.add(path, arcname=f"blobs/sha256/{digest.split(':', 1)[1]}", recursive=False)
    os.rename(tmp, out)


