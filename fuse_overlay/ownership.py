"""Presenting in-box owners and modes that the host cannot store.

The daemon is an unprivileged host user: it cannot chown, cannot create
device nodes, and must keep every upper file readable and writable for
itself even when the box chmods it to 000.  Whatever the host cannot hold
lives in the ``user.sbx.owner`` xattr as ``uid:gid:mode:rdev`` (mode with
its file-type bits, octal) and is presented back instead of the real
values.  Owners are ids as seen inside the box.
"""

import errno
import os
import stat
from dataclasses import dataclass
from typing import Literal, Sequence

from .errors import ConfigError
from .markers import OWNER_XATTR

OVERFLOW_ID = 65534

Unmapped = Literal["identity", "overflow"]


@dataclass(frozen=True)
class IdRange:
    host: int
    box: int
    count: int


class IdMap:
    """Maps host ids (what the upper and lowers store) to ids shown in the box."""

    def __init__(self, ranges: Sequence[IdRange] = (), unmapped: Unmapped = "identity", root: int = 0) -> None:
        """`root`: the box id that stands for the layers' root (0 and it trade places between what the layers and
        xattrs hold and what the box sees), for a box whose program is root of a user namespace of its own in
        which that id is 0 (sbx's --user 0)."""
        self.ranges = tuple(ranges)
        self.unmapped: Unmapped = unmapped
        self.root = root
        self._to_box: dict[int, int] = {}

    @classmethod
    def single(cls, host: int, box: int, unmapped: Unmapped = "identity") -> "IdMap":
        return cls([IdRange(host, box, 1)], unmapped)

    @classmethod
    def parse(cls, spec: str, unmapped: Unmapped = "identity", root: int = 0) -> "IdMap":
        """Parse fuse-overlayfs's ``BOX:HOST:COUNT[:BOX:HOST:COUNT...]``."""
        parts = spec.replace(",", ":").split(":")
        if len(parts) % 3 or not spec:
            raise ConfigError(f"id mapping {spec!r} is not a list of BOX:HOST:COUNT triples")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"id mapping {spec!r} has a non-numeric field") from None
        return cls([IdRange(nums[i + 1], nums[i], nums[i + 2]) for i in range(0, len(nums), 3)], unmapped, root)

    def to_box(self, host_id: int) -> int:
        cached = self._to_box.get(host_id)
        if cached is not None:
            return cached
        result = OVERFLOW_ID if self.unmapped == "overflow" else host_id
        for r in self.ranges:
            if r.host <= host_id < r.host + r.count:
                result = r.box + host_id - r.host
                break
        result = self._to_box[host_id] = self.view(result)
        return result

    def view(self, stored: int) -> int:
        """The box's id for an id as the layers hold it (an owner xattr's), and back: 0 and `root` swapped."""
        return self.root if stored == 0 else 0 if stored == self.root else stored


@dataclass(frozen=True)
class Override:
    uid: int
    gid: int
    mode: int
    rdev: int = 0

    def encode(self) -> bytes:
        return f"{self.uid}:{self.gid}:{self.mode:o}:{self.rdev}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Override | None":
        try:
            uid, gid, mode, rdev = raw.decode().split(":")
            return cls(int(uid), int(gid), int(mode, 8), int(rdev))
        except ValueError:
            return None


_OWNER_NAME = os.fsdecode(OWNER_XATTR)


def read_override(path: bytes) -> Override | None:
    """Listed first: most objects have no override, and a getxattr that fails costs Python an exception, twice
    the listxattr's price (the daemon asks once per entry of every directory it lists)."""
    try:
        if _OWNER_NAME not in os.listxattr(path, follow_symlinks=False):
            return None
        return Override.decode(os.getxattr(path, OWNER_XATTR, follow_symlinks=False))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.ENOENT, errno.EACCES):
            return None
        raise


def write_override(path: bytes, ov: Override | None) -> None:
    if ov is None:
        try:
            os.removexattr(path, OWNER_XATTR, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
        return
    os.setxattr(path, OWNER_XATTR, ov.encode(), follow_symlinks=False)


def host_mode(mode: int) -> int:
    """Permission bits for the real upper file.

    The daemon always needs to read and write its own files, and set-id bits
    must never reach the host disk: the box's exact mode lives in the
    override xattr instead.
    """
    perm = stat.S_IMODE(mode) & 0o1777
    if stat.S_ISDIR(mode):
        return perm | 0o700
    if stat.S_ISREG(mode):
        return perm | 0o600
    return perm


def can_hold_xattr(mode: int) -> bool:
    """Linux refuses user.* xattrs on symlinks and special files."""
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)
