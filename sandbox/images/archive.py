"""What `sbx image import` reads: a rootfs (directory or tar), a docker-archive, or an OCI image layout.

Each becomes a `Source`: the image config (None for a bare rootfs) and its
layers, bottom first, each a blob to open with the digests it must have.
Layer blobs may be plain, gzip or zstd tars (told apart by their first bytes).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import zstandard

from .unpack import ArchiveError

MAX_JSON = 16 * 2**20
"""A manifest, index or config larger than this is refused (they are a few KiB)."""


@dataclass(frozen=True)
class LayerBlob:
    where: str
    open: Callable[[], IO[bytes]]
    digest: str | None = None  # of the blob as stored; verified when known (OCI)
    diff_id: str | None = None  # of the uncompressed tar; verified when the config names it


@dataclass(frozen=True)
class Source:
    config: dict[str, Any] | None
    layers: list[LayerBlob]
    tags: list[str]  # names the archive gives the image (docker-archive RepoTags)


class Verified(io.RawIOBase):
    """A blob read through, hashed as it goes; `check()` after the last byte compares the digest."""

    def __init__(self, raw: IO[bytes], digest: str | None, where: str) -> None:
        self.raw, self.digest, self.where = raw, digest, where
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        self.sha.update(data)
        b[: len(data)] = data
        return len(data)

    def check(self) -> None:
        while self.raw.read(1 << 20):
            pass
        if self.digest is not None and "sha256:" + self.sha.hexdigest() != self.digest:
            raise ArchiveError(f"{self.where}: its content does not match its digest {self.digest}")


def decompressed(blob: IO[bytes]) -> IO[bytes]:
    """The tar inside a plain, gzip or zstd blob."""
    buffered = io.BufferedReader(blob)  # type: ignore[arg-type]
    magic = buffered.peek(4)[:4]
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered)  # type: ignore[return-value]
    if magic == b"\x28\xb5\x2f\xfd":
        zstd = zstandard.ZstdDecompressor()
        return zstd.stream_reader(buffered, read_across_frames=True)  # type: ignore[return-value]
    return buffered


@contextlib.contextmanager
def open_source(path: str) -> Iterator[Source]:
    """The image in `path`, detected by what it holds; its files stay open while the caller reads the layers."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "oci-layout")):
            yield _oci(lambda name: open(os.path.join(path, name), "rb"), path)
        else:
            with _tar_of_directory(path) as tar_path:
                yield Source(None, [LayerBlob(path, lambda: open(tar_path, "rb"))], [])
        return
    if not os.path.isfile(path):
        raise ArchiveError(f"{path}: no such file or directory")
    try:
        outer = tarfile.open(path, "r:")
    except tarfile.TarError:
        outer = None  # a compressed rootfs tar: a layer as it is
    if outer is None:
        yield Source(None, [LayerBlob(path, lambda: open(path, "rb"))], [])
        return
    with outer:
        # by content, whatever the names' prefix: `tar -C layout -cf image.tar .` names ./oci-layout
        names = {posixpath.normpath(n).lstrip("/"): n for n in outer.getnames()}

        def member(name: str) -> IO[bytes]:
            try:
                f = outer.extractfile(names.get(name, name))
            except KeyError:
                f = None
            if f is None:
                raise ArchiveError(f"{path}: {name} is missing")
            return f  # type: ignore[return-value]
        if "oci-layout" in names:
            yield _oci(member, path)
        elif "manifest.json" in names:
            yield _docker(member, path)
        elif "index.json" in names:  # never a rootfs: an image that cannot be read as one is refused
            raise ArchiveError(f"{path}: has index.json but no oci-layout, so it is neither an OCI image layout "
                               "nor a docker-archive")
        else:
            yield Source(None, [LayerBlob(path, lambda: open(path, "rb"))], [])


def _json(f: IO[bytes], where: str) -> Any:
    with f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise ArchiveError(f"{where}: larger than {MAX_JSON} bytes")
    try:
        return json.loads(data)
    except ValueError as e:
        raise ArchiveError(f"{where}: not valid JSON ({e})") from None


def _blob_name(digest: str, where: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ArchiveError(f"{where}: unsupported or malformed digest {digest!r}")
    return f"blobs/sha256/{hexd}"


Opener = Callable[[str], IO[bytes]]
"""A file of the archive by its name in it."""


def _metadata(read: Callable[[Opener, str], Source]) -> Callable[[Opener, str], Source]:
    """Manifests and configs are the archive's: a missing key or a wrong type is a bad archive, said in one line."""
    @functools.wraps(read)
    def checked(opener: Opener, where: str) -> Source:
        try:
            return read(opener, where)
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ArchiveError(f"{where}: malformed image metadata ({type(e).__name__}: {e})") from None
    return checked


@_metadata
def _oci(opener: Opener, where: str) -> Source:
    index = _json(opener("index.json"), f"{where}: index.json")
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise ArchiveError(f"{where}: the OCI layout holds {len(manifests)} manifests; import one image at a time")
    manifest = _verified_json(opener, manifests[0]["digest"], where)
    config = _verified_json(opener, manifest["config"]["digest"], where)
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    layers = manifest.get("layers", [])
    if len(diff_ids) != len(layers):
        raise ArchiveError(f"{where}: the config names {len(diff_ids)} layers, the manifest {len(layers)}")
    blobs = []
    for i, (desc, diff_id) in enumerate(zip(layers, diff_ids, strict=True)):
        name = _blob_name(desc["digest"], where)
        blobs.append(LayerBlob(f"{where}: layer {i + 1}", lambda n=name: opener(n), desc["digest"], diff_id))
    ref = (manifests[0].get("annotations") or {}).get("org.opencontainers.image.ref.name")
    return Source(config, blobs, [ref] if ref else [])


def _verified_json(opener: Opener, digest: str, where: str) -> Any:
    name = _blob_name(digest, where)
    with opener(name) as f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise ArchiveError(f"{where}: {name} is larger than {MAX_JSON} bytes")
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ArchiveError(f"{where}: {name} does not match its digest")
    return json.loads(data)


@_metadata
def _docker(opener: Opener, where: str) -> Source:
    manifest = _json(opener("manifest.json"), f"{where}: manifest.json")
    if not isinstance(manifest, list) or len(manifest) != 1:
        raise ArchiveError(f"{where}: the docker archive holds {len(manifest)} images; import one at a time")
    entry = manifest[0]
    config = _json(opener(entry["Config"]), f"{where}: {entry['Config']}")
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(entry["Layers"]):
        raise ArchiveError(f"{where}: the config names {len(diff_ids)} layers, the manifest {len(entry['Layers'])}")
    blobs = [LayerBlob(f"{where}: {name}", lambda n=name: opener(n), None, diff_id)
             for name, diff_id in zip(entry["Layers"], diff_ids, strict=True)]
    return Source(config, blobs, list(entry.get("RepoTags") or []))


@contextlib.contextmanager
def _tar_of_directory(path: str) -> Iterator[str]:
    """A rootfs directory as one layer tar (links kept as links), in a temporary file.  What the caller owns is
    root's, as the caller is root in the box (`podman import` does the same)."""
    uid, gid = os.getuid(), os.getgid()

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.uname = (0, "root") if info.uid == uid else (info.uid, info.uname)
        info.gid, info.gname = (0, "root") if info.gid == gid else (info.gid, info.gname)
        return info

    with tempfile.NamedTemporaryFile(prefix="sbx-rootfs-", suffix=".tar") as tmp:
        with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(os.listdir(path)):
                tar.add(os.path.join(path, name), arcname=name, recursive=True, filter=as_root)
        tmp.flush()
        yield tmp.name
