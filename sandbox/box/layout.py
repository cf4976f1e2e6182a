"""The box's root filesystem: what is mounted where, as the caller asked for it.

`Layout` is checked in the supervisor (so bad input gets a clear message
before anything is forked) and made into a plan there (plan.py); the
starter (starter.c) carries the plan out inside the new user and mount
namespaces, and its pivot step ends with a lazy unmount of the old root, so
the host tree is detached from the box rather than hidden.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping

from .. import hostpath
from ..errors import ConfigError
from ..record import Record, field
from .netstack import Network

WORK_DIR = "/box"
SECRETS_DIR = "/run/secrets"
MAX_SECRET = 64 * 2**10
MAX_SECRETS = 256 * 2**10
"""A secret's size, and all of a box's together: they travel in the plan, and live in the box's memory."""
_SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class Bind(Record):
    src: str
    dst: str
    writable: bool
    identity: tuple[int, int] | None = None
    """(st_dev, st_ino) of what `src` named when the sandbox resolved it (hostpath.py): box init binds that,
    found again without following a link, or nothing."""


class VolumeMount(Record):
    """`--volume NAME:/path[:ro]`: the named volume NAME (volumes.py) at `dst`, made on its first use."""

    name: str
    dst: str
    read_only: bool = False


class MountedVolume(Record):
    """A volume as its box mounts it and its daemon serves it: `data` its upper (or, read-only, its lower) over the
    empty `lower`, capped by `size` bytes and `inodes` names."""

    name: str
    dst: str
    read_only: bool
    data: str
    work: str
    lower: str
    size: int
    inodes: int
    owner: tuple[int, int] | None
    """The in-box owner its root is given when the box mounts it: on its first use only (the daemon keeps it)."""


class Layout(Record):
    disk: int
    inodes: int
    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[str, ...] = ()
    lowers: tuple[str, ...] = ()
    """With lowers, the root is their union (top first) over `upper`, not the host's system dirs."""
    upper: str | None = None
    """Host dir keeping what the program wrote; None: a tmpfs inside the box, capped by `disk`."""
    workdir: str | None = None
    """The union's scratch dir for `upper`, on the same filesystem (made and removed by the supervisor)."""
    fs: str = "kernel"
    """The union's implementation: "kernel" (overlayfs) or "fuse" (sbx-overlayfs, served from outside)."""
    hostname: str = "sbx"
    loopback: bool = True
    home: str = WORK_DIR
    """The program's working directory on the box's capped tmpfs, beside /tmp and /dev/shm (go-judge's clients
    expect /w)."""
    netstack: Network | None = None
    """With --net pasta or slirp4netns: the box's way out (netstack.py); its /etc/resolv.conf and /etc/hosts say
    so."""
    volumes: tuple[MountedVolume, ...] = ()
    build: bool = False
    """A build step's box: no home and no /tmp of sbx's over the union root (it sees the image's own)."""
    secrets: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    """Files of /run/secrets, each (name, value): a read-only tmpfs of their own, never in a layer or an upper."""


def check_secrets(secrets: Mapping[str, bytes | str]) -> tuple[tuple[str, bytes], ...]:
    """The secrets as the plan takes them: names that are plain file names, values within MAX_SECRET and
    MAX_SECRETS (a str is taken as UTF-8)."""
    checked = []
    for name, value in sorted(secrets.items()):
        if not _SECRET_NAME.fullmatch(name):
            raise ConfigError(f"--secret id={name!r}: a name of letters, digits, '.', '_' and '-', at most 128")
        data = value.encode() if isinstance(value, str) else bytes(value)
        if len(data) > MAX_SECRET:
            raise ConfigError(f"--secret id={name}: {len(data)} bytes, more than {MAX_SECRET}")
        checked.append((name, data))
    if sum(len(data) for _, data in checked) > MAX_SECRETS:
        raise ConfigError(f"--secret: more than {MAX_SECRETS} bytes of secrets in all")
    return tuple(checked)


def parse_bind(spec: str, writable: bool) -> Bind:
    """`SRC[:DST]` with SRC on the host (must exist) and DST absolute in the box (default: SRC)."""
    flag = "--bind" if writable else "--ro-bind"
    src, sep, dst = spec.partition(":")
    if not src:
        raise ConfigError(f"{flag} {spec!r}: empty source")
    return Bind(src, check_box_path(dst if sep else os.path.abspath(src), flag), writable)


def parse_volume(spec: str) -> VolumeMount | Bind:
    """`NAME:/PATH[:ro|rw]` (docker's `-v`); a source that is a path (starting with / or .) is a host bind, as in
    docker and podman."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[2:] not in ([], ["ro"], ["rw"]) or not parts[0]:
        raise ConfigError(f"--volume {spec!r}: expected NAME:/PATH[:ro] (or a host path as SRC:/PATH[:ro])")
    read_only, dst = parts[2:] == ["ro"], check_box_path(parts[1], "--volume")
    if parts[0].startswith(("/", ".")):
        return Bind(parts[0], dst, not read_only)
    return VolumeMount(parts[0], dst, read_only)


def resolve_bind(bind: Bind, guard: hostpath.Guard) -> Bind:
    """The bind with `src` walked as hostpath.py says: link-free, and with the identity box init checks."""
    with hostpath.resolve(bind.src, "--bind" if bind.writable else "--ro-bind", guard) as found:
        return Bind(found.path, bind.dst, bind.writable, found.identity)


def parse_lower(path: str) -> str:
    return _layer_dir(path, "--lower", os.R_OK | os.X_OK, "not readable")


def parse_upper(path: str) -> str:
    return _layer_dir(path, "--upper", os.W_OK | os.X_OK, "not writable")


def _layer_dir(path: str, flag: str, access: int, refusal: str) -> str:
    """A host dir for the union: link-free (hostpath.py), accessible, and spellable in overlay's option string."""
    with hostpath.resolve(path, flag) as found:
        real, is_dir = found.path, stat.S_ISDIR(os.fstat(found.fd).st_mode)
    if not is_dir:
        raise ConfigError(f"{flag} {path}: not a directory")
    if not os.access(real, access):
        raise ConfigError(f"{flag} {path}: {refusal}")
    if any(c in real for c in ":,"):
        raise ConfigError(f"{flag} {path}: overlay paths cannot contain ':' or ','")
    return real


def check_box_path(path: str, flag: str) -> str:
    if not path.startswith("/"):
        raise ConfigError(f"{flag} {path}: destination must be an absolute path in the box")
    norm = os.path.normpath(path)
    if norm == "/" or norm.split("/")[1] in ("proc", "dev"):
        raise ConfigError(f"{flag} {path}: cannot mount over {norm}")
    return norm
