"""The image store: layers unpacked once by content, images by the digest of their manifest, names pointing to them.

Under `$XDG_DATA_HOME/sbx/images` (default `~/.local/share/sbx/images`)::

    blobs/sha256/HEX   manifests and configs, named by their digest
    layers/HEX/root    one unpacked layer, named by its chain id: the digest of its uncompressed tar (diff_id)
                       and of the layers under it (OCI's ChainID), as it is unpacked onto their view
    layers/HEX/size    the bytes it unpacked to; HEX/owners.json the owners other than root its entries have
    layers/HEX/owned-* its entries that have owners, really owned, for the kernel union (owned.py)
    refs.json          {"name:tag": "sha256:HEX"}, the manifest each name points to
    tmp/               layers being unpacked (those of a killed import go with the next one)
    lock               flocked: shared to read names and pin layers, exclusive to change them

An import unpacks without the lock and takes it only to put finished layers
in place (a layer already there is kept: same content) and name the image.
A box holds a shared flock on each of its layers for as long as it lives, so
`prune` removes only layers no name refers to and no box uses.

A run only reads names and pins layers: the machinery of archives, tar and
unpacking (tarfile, gzip, zstandard) is loaded by the methods that import
or commit, not by every start of a box on an image.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .. import fdpath, teardown
from ..errors import ConfigError
from ..record import Record
from ..sha256 import hexdigest
from . import owned

if TYPE_CHECKING:
    from ..budget import Budget
    from .archive import LayerBlob, Source
    from .unpack import Caps

_NAME = re.compile(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIFF_ID = re.compile(r"sha256:[0-9a-f]{64}")


def parse_ref(ref: str) -> str:
    """`NAME[:TAG]` with TAG `latest` by default, checked; a registry host's port is not a tag."""
    name, tag = ref, "latest"
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
    if not _NAME.fullmatch(name) or not _TAG.fullmatch(tag):
        raise ConfigError(f"image {ref!r}: not a valid NAME[:TAG] (lowercase name, tag of letters, digits, . _ -)")
    return f"{name}:{tag}"


class Image(Record):
    ref: str
    digest: str  # of the manifest
    config: dict[str, Any]
    diff_ids: tuple[str, ...]  # bottom first

    @property
    def runtime(self) -> dict[str, Any]:
        return self.config.get("config") or {}

    @property
    def chain_ids(self) -> tuple[str, ...]:
        """The store's names of the image's unpacked layers, bottom first."""
        return chain_ids(self.diff_ids)


def with_history(config: dict[str, Any], layers: int) -> dict[str, Any]:
    """`config` with a history entry for each of its `layers` (one "sbx" entry for each the history lacks).  OCI
    makes history optional, but buildah and podman refuse an image whose history counts other layers than it has."""
    history = list(config.get("history") or [])
    have = sum(1 for h in history if not h.get("empty_layer"))
    if have > layers:
        history, have = [], 0
    return {**config, "history": history + [{"created_by": "sbx"}] * (layers - have)}


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(chain_id(chain[-1] if chain else None, diff_id))
    return tuple(chain)


def chain_id(parent: str | None, diff_id: str) -> str:
    """OCI's ChainID: a layer's diff_id at the bottom, else the digest of its parent's chain id and its own."""
    return diff_id if parent is None else "sha256:" + hexdigest(f"{parent} {diff_id}".encode())


class Store:
    def __init__(self, root: str | None = None) -> None:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        self.root = root or os.path.join(base, "sbx", "images")
        try:
            for d in ("blobs/sha256", "layers", "tmp"):
                os.makedirs(os.path.join(self.root, d), mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"the image store {self.root}: {e.strerror}") from None

    # --- locking ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    # --- names --------------------------------------------------------------------------------------------

    def _refs(self) -> dict[str, str]:
        try:
            with open(os.path.join(self.root, "refs.json")) as f:
                return dict(json.load(f))
        except FileNotFoundError:
            return {}

    def _write_refs(self, refs: dict[str, str]) -> None:
        tmp = os.path.join(self.root, f"refs.json.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(refs, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.root, "refs.json"))

    def _blob(self, digest: str) -> bytes:
        with open(os.path.join(self.root, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
            return f.read()

    def _put_blob(self, data: bytes) -> str:
        digest = "sha256:" + hexdigest(data)
        path = os.path.join(self.root, "blobs", "sha256", digest.split(":", 1)[1])
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, path)
        return digest

    def get(self, ref: str) -> Image:
        ref = parse_ref(ref)
        with self._locked(fcntl.LOCK_SH):
            return self._get(ref)

    def _get(self, ref: str) -> Image:
        digest = self._refs().get(ref)
        if digest is None:
            raise ConfigError(f"image {ref}: not in the store (sbx image ls lists it, sbx image import adds one)")
        return self._image(ref, digest)

    def _image(self, ref: str, digest: str) -> Image:
        manifest = json.loads(self._blob(digest))
        config = json.loads(self._blob(manifest["config"]["digest"]))
        return Image(ref, digest, config, tuple(layer["digest"] for layer in manifest["layers"]))

    def by_digest(self, digest: str) -> Image | None:
        """The image whose manifest is `digest`, named or not (a build step's), if the store still has it."""
        if not _DIFF_ID.fullmatch(digest):
            return None
        with self._locked(fcntl.LOCK_SH):
            try:
                return self._image("", digest)
            except (OSError, ValueError, KeyError):
                return None

    def layer_dir(self, chain: str) -> str:
        return os.path.join(self.root, "layers", chain.split(":", 1)[1])

    def pin(self, ref: str) -> tuple[Image, list[int]]:
        """The image and a shared flock on each of its layers: no prune removes them until the fds are closed."""
        ref = parse_ref(ref)
        with self._locked(fcntl.LOCK_SH):
            image = self._get(ref)
            return image, self._pin_image_locked(image)

    def pin_image(self, image: Image) -> list[int]:
        """`pin` for an image in hand, named or not (a build step's)."""
        with self._locked(fcntl.LOCK_SH):
            return self._pin_image_locked(image)

    def _pin_image_locked(self, image: Image) -> list[int]:
        fds: list[int] = []
        try:
            for chain in image.chain_ids:
                try:
                    fds.append(self._pin_layer_locked(chain))
                except FileNotFoundError:
                    what = image.ref or image.digest
                    raise ConfigError(f"image {what}: its layer {chain} is not in the store (pruned, or a store from "
                                      f"before layers were named by chain id: remove the image and import it "
                                      "again)") from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def list(self) -> list[dict[str, Any]]:
        with self._locked(fcntl.LOCK_SH):
            out = []
            for ref, digest in sorted(self._refs().items()):
                image = self._get(ref)
                out.append({"name": ref, "digest": digest, "layers": len(image.diff_ids),
                            "size": sum(self._layer_size(c) for c in image.chain_ids)})
            return out

    def owns(self, image: Image, uid: int, gid: int) -> bool:
        """Whether an entry of the image is owned by `uid` or `gid` (the program's), which without a subordinate id
        range only the FUSE union shows (unpack.py's OWNER_XATTR, owned.py); a layer unpacked before owners were
        noted counts as one that is."""
        for chain in image.chain_ids:
            owners = owned.recorded_owners(self.layer_dir(chain))
            if owners is None or uid in owners[0] or gid in owners[1]:
                return True
        return False

    def _layer_size(self, chain: str) -> int:
        try:
            with open(os.path.join(self.layer_dir(chain), "size")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def tag(self, src: str, dst: str) -> None:
        src, dst = parse_ref(src), parse_ref(dst)
        with self._locked(fcntl.LOCK_EX):
            refs = self._refs()
            if src not in refs:
                raise ConfigError(f"image {src}: not in the store")
            refs[dst] = refs[src]
            self._write_refs(refs)

    def remove(self, ref: str) -> None:
        """Forget the name; the layers stay until `prune` finds nothing else refers to them."""
        ref = parse_ref(ref)
        with self._locked(fcntl.LOCK_EX):
            refs = self._refs()
            if refs.pop(ref, None) is None:
                raise ConfigError(f"image {ref}: not in the store")
            self._write_refs(refs)

    def prune(self) -> list[str]:
        """Remove the layers and blobs no name refers to and no box uses; the chain ids of the layers removed."""
        removed = []
        with self._locked(fcntl.LOCK_EX):
            used_layers: set[str] = set()
            used_blobs: set[str] = set()
            for ref in self._refs():
                image = self._get(ref)
                manifest = json.loads(self._blob(image.digest))
                used_blobs |= {image.digest.split(":")[1], manifest["config"]["digest"].split(":")[1]}
                used_layers |= {c.split(":")[1] for c in image.chain_ids}
            layers = os.path.join(self.root, "layers")
            for hexd in sorted(os.listdir(layers)):
                if hexd in used_layers:
                    continue
                fd = os.open(os.path.join(layers, hexd), fdpath.DIR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    os.close(fd)
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        continue  # a box still runs on it
                    raise
                try:
                    views = [os.path.join(layers, hexd, n) for n in os.listdir(fd) if n.startswith(owned.VIEWS)]
                    if views:  # owned by the subordinate ids: removed as box root
                        from ..box.userns import detect
                        owned.remove(views, detect())
                    st = os.fstat(fd)
                    teardown.remove_tree(os.path.join(layers, hexd), (st.st_dev, st.st_ino))
                finally:
                    os.close(fd)
                removed.append("sha256:" + hexd)
            blobs = os.path.join(self.root, "blobs", "sha256")
            for hexd in os.listdir(blobs):
                if hexd not in used_blobs:
                    os.unlink(os.path.join(blobs, hexd))
        return removed

    # --- import ---------------------------------------------------------------------------------------------

    def import_path(self, path: str, ref: str | None, caps: Caps | None = None,
                    progress: Callable[[str], None] = lambda line: None) -> Image:
        """Import a rootfs, docker-archive or OCI layout; named `ref`, else by the archive, else an error
        (within `caps`: unpack.py's defaults unless given)."""
        from .archive import open_source
        from .unpack import Caps

        with open_source(path) as source, self._pinning() as pins:
            name = parse_ref(ref) if ref else parse_ref(source.tags[0]) if source.tags else None
            if name is None:
                raise ConfigError(f"{path}: the archive names no image: give --name NAME[:TAG]")
            diff_ids = self._unpack_layers(source, (), caps or Caps(), progress, pins)
            config = dict(source.config or {"architecture": "amd64", "os": "linux", "config": {}})
            config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
            return self.save(config, diff_ids, name)

    @contextlib.contextmanager
    def _pinning(self) -> Iterator[list[int]]:
        """Fds of shared flocks on the layers an import has placed: no prune takes them before they are named."""
        pins: list[int] = []
        try:
            yield pins
        finally:
            for fd in pins:
                os.close(fd)

    def _unpack_layers(self, source: Source, parents: tuple[str, ...], caps: Caps, progress: Callable[[str], None],
                       pins: list[int]) -> list[str]:
        """The source's layers unpacked over the layers `parents` (chain ids, bottom first, pinned); their
        diff_ids."""
        from ..budget import Budget

        budget = Budget(caps.bytes, caps.entries)
        diff_ids = []
        chains = list(parents)
        for i, blob in enumerate(source.layers):
            parent = chains[-1] if chains else None
            known = blob.diff_id and _DIFF_ID.fullmatch(blob.diff_id)
            shared = self._pin_layer(chain_id(parent, blob.diff_id)) if known else None  # type: ignore[arg-type]
            if shared is not None:  # here already: reading the blob through proves it is that layer
                pins.append(shared)
                diff_id = self._read_through(blob, budget)
            else:
                diff_id = self._unpack_layer(blob, chains, budget, pins)
            diff_ids.append(diff_id)
            chains.append(chain_id(parent, diff_id))
            how = "shared, verified" if shared is not None else "unpacked"
            progress(f"layer {i + 1}/{len(source.layers)}: {diff_id[:19]} {how} ({budget.used_bytes >> 20} MiB so far)")
        return diff_ids

    @staticmethod
    def _read_through(blob: LayerBlob, budget: Budget) -> str:
        from .archive import Verified, decompressed
        from .unpack import digest as tar_digest

        with blob.open() as raw:
            verified = Verified(raw, blob.digest, blob.where)
            diff_id = tar_digest(decompressed(verified), budget, blob.where)
            verified.check()
        return _checked(blob, diff_id)

    def _unpack_layer(self, blob: LayerBlob, parents: list[str], budget: Budget, pins: list[int]) -> str:
        from .. import scratch
        from .archive import Verified, decompressed
        from .unpack import unpack

        work, lock = scratch.make(os.path.join(self.root, "tmp"), "unpack-")
        made = teardown.identity(work)
        try:
            os.mkdir(os.path.join(work, "root"), 0o755)
            before = budget.used_bytes
            with blob.open() as raw:
                verified = Verified(raw, blob.digest, blob.where)
                below = tuple(os.path.join(self.layer_dir(c), "root") for c in reversed(parents))
                diff_id, owners = unpack(decompressed(verified), os.path.join(work, "root"), budget, blob.where,
                                         below)
                verified.check()
            _checked(blob, diff_id)
            with open(os.path.join(work, "size"), "w") as f:
                f.write(str(budget.used_bytes - before))
            with open(os.path.join(work, owned.OWNERS), "w") as f:
                json.dump({"uids": sorted(owners.uids), "gids": sorted(owners.gids)}, f)
            pins.append(self._place_layer(work, lock, chain_id(parents[-1] if parents else None, diff_id)))
            if pins[-1] == lock:
                lock = -1  # it pins the layer now
            return diff_id
        finally:
            if os.path.exists(work):  # (renamed into layers/ when it became the layer)
                teardown.remove_tree(work, made)
            if lock >= 0:
                os.close(lock)

    def commit(self, base: Image, upper: str, ref: str) -> Image:
        """A new image named `ref`: `base` with a run's upper dir on it as one more layer."""
        ref = parse_ref(ref)
        with self._pinning() as pins:
            diff_ids = [*base.diff_ids, self.layer_from_upper(base, upper, f"--commit {ref}", pins)]
            return self.save({**base.config, "rootfs": {"type": "layers", "diff_ids": diff_ids}}, diff_ids, ref)

    def layer_from_upper(self, base: Image, upper: str, what: str, pins: list[int]) -> str:
        """A run's upper dir, finished, as a layer on `base` (whiteouts for what it deleted; pinned into `pins`);
        its diff_id.  The upper is the program's work: it goes through the same unpacking as any archive."""
        from .. import scratch
        from .tar import tar_layer

        with scratch.workdir(os.path.join(self.root, "tmp"), "commit-") as work:
            tar_path = os.path.join(work, "layer.tar")
            tar_layer(upper, tar_path, f"{what}: the run's files")
            return self.add_layer(base, tar_path, f"the run's upper (for {what})", pins)

    def add_layer(self, base: Image, tar_path: str, where: str, pins: list[int]) -> str:
        """Unpack the layer tar `tar_path` onto `base`'s layers (pinned into `pins`, as the new one is); its
        diff_id.  The tar is untrusted: it goes through the same unpacking as any archive."""
        from .archive import LayerBlob, Source
        from .unpack import Caps

        source = Source(None, [LayerBlob(where, lambda: open(tar_path, "rb"))], [])
        [diff_id] = self._unpack_layers(source, base.chain_ids, Caps(), lambda line: None, pins)
        return diff_id

    def _place_layer(self, work: str, lock: int, chain: str) -> int:
        """Put the unpacked layer in place, unless the same content is there already; returns a pin of the layer.

        When the work dir becomes the layer, its scratch lock (`lock`, exclusive) becomes the pin (shared):
        a second lock of this process on the same dir would wait for the first.
        """
        with self._locked(fcntl.LOCK_EX):
            if not os.path.exists(self.layer_dir(chain)):
                os.rename(work, self.layer_dir(chain))
                fcntl.flock(lock, fcntl.LOCK_SH)
                return lock
            return self._pin_layer_locked(chain)

    def _pin_layer(self, chain: str) -> int | None:
        """A shared flock on the layer `chain` if the store has it, else None."""
        with self._locked(fcntl.LOCK_SH):
            try:
                return self._pin_layer_locked(chain)
            except FileNotFoundError:
                return None

    def _pin_layer_locked(self, chain: str) -> int:
        fd = os.open(self.layer_dir(chain), fdpath.DIR)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def save(self, config: dict[str, Any], diff_ids: list[str], ref: str | None) -> Image:
        """The image of `config` and the layers `diff_ids` (in the store), named `ref` (checked), or unnamed."""
        ref = parse_ref(ref) if ref is not None else None
        config = with_history(config, len(diff_ids))
        sizes = [self._layer_size(c) for c in chain_ids(diff_ids)]
        with self._locked(fcntl.LOCK_EX):
            config_blob = json.dumps(config, sort_keys=True).encode()
            config_digest = self._put_blob(config_blob)
            manifest = {
                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                           "size": len(config_blob)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                            "size": size} for d, size in zip(diff_ids, sizes, strict=True)],
            }
            digest = self._put_blob(json.dumps(manifest, sort_keys=True).encode())
            if ref is not None:
                refs = self._refs()
                refs[ref] = digest
                self._write_refs(refs)
        return Image(ref or "", digest, config, tuple(diff_ids))


def _checked(blob: LayerBlob, diff_id: str) -> str:
    from .unpack import ArchiveError

    if blob.diff_id is not None and diff_id != blob.diff_id:
        raise ArchiveError(f"{blob.where}: unpacks to {diff_id}, but the config says {blob.diff_id}")
    return diff_id
