"""Images for the tests: a busybox rootfs, layer tars made entry by entry (hostile ones too), OCI layouts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from sandbox.images import owned

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "rm", "mkdir", "touch", "stat", "id", "pwd", "env", "test", "true", "printf")


def views(store: Path) -> list[str]:
    """The views of in-image owners (and partial ones) in the image store `store` (sandbox/images/owned.py)."""
    layers = store / "layers"
    return [str(layers / h / n) for h in (os.listdir(layers) if layers.is_dir() else ())
            for n in os.listdir(layers / h) if n.startswith(owned.VIEWS)]


def busybox_rootfs(into: Path) -> Path:
    """A minimal root: the static busybox and links for a few applets, /etc/motd, and an empty /tmp."""
    (into / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, into / "bin" / "busybox")
    for applet in APPLETS:
        (into / "bin" / applet).symlink_to("busybox")
    (into / "etc").mkdir()
    (into / "etc" / "motd").write_text("from the image\n")
    (into / "tmp").mkdir()
    for d in (into, into / "bin", into / "etc", into / "tmp"):
        d.chmod(0o755)
    return into


@dataclass
class Entry:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def layer_tar(entries: list[Entry]) -> bytes:
    """A layer tar with exactly these entries, in this order (tarfile would refuse none of them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.linkname, info.mode, info.uid, info.gid = e.kind, e.linkname, e.mode, e.uid, e.gid
            info.size = len(e.data) if e.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(e.data) if e.kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def tar_of(root: Path, as_root: bool = False) -> bytes:
    """The tree as a layer, its entries owned as on disk, or by root (as an image's files are)."""
    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if as_root:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(root)):
            tar.add(root / name, arcname=name, filter=owned)
    return buf.getvalue()


@dataclass
class OciImage:
    layers: list[bytes]  # uncompressed tars, bottom first
    config: dict[str, object] = field(default_factory=dict)  # the runtime part: Env, Cmd, WorkingDir, ...
    compression: str = "gzip"  # or "zstd", or "" for plain tars
    ref: str | None = None
    diff_ids: list[str] | None = None  # what the config claims, if not the layers' own

    def write(self, into: Path) -> Path:
        """An OCI image layout directory."""
        blobs = into / "blobs" / "sha256"
        blobs.mkdir(parents=True)

        def put(data: bytes) -> str:
            digest = hashlib.sha256(data).hexdigest()
            (blobs / digest).write_bytes(data)
            return f"sha256:{digest}"
        descs = []
        for layer in self.layers:
            stored = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress, "": bytes}[self.compression](
                layer)
            descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + (f"+{self.compression}" if
                                                                                   self.compression else ""),
                          "digest": put(stored), "size": len(stored)})
        config = {"architecture": "amd64", "os": "linux", "config": self.config,
                  "rootfs": {"type": "layers", "diff_ids": self.diff_ids or [
                      "sha256:" + hashlib.sha256(t).hexdigest() for t in self.layers]}}
        config_blob = json.dumps(config).encode()
        manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": put(config_blob), "size": len(config_blob)},
                               "layers": descs}).encode()
        desc: dict[str, object] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "digest": put(manifest), "size": len(manifest)}
        if self.ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": self.ref}
        (into / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
        (into / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        return into
