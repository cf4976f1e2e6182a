"""User-namespace id mapping: who is who inside the box.

Two shapes, chosen once per box:

* ``range``: the caller has an /etc/subuid and /etc/subgid range and the
  setuid helpers newuidmap/newgidmap exist.  Box root (uid 0) is the caller,
  uids 1..N are the subordinate range, and the program runs as uid 1000 of
  that range: a host uid of its own, so it cannot signal, ptrace or read the
  files of box init or of the supervisor even if it escaped a check.
  With ``root`` (``--user 0``), the program is instead root of a user
  namespace of its own, nested in the box's, whose 0 is box uid N (the top
  of the range) and whose 1..N-1 are the box's: it may chown, setuid and
  install packages over what that namespace owns, and still has no power
  over box init, the spawner, the mounts or the accounting (box root is not
  in its namespace, and it is another host uid).
* ``single``: only the caller's own uid is mapped (setgroups denied), the
  program keeps that uid inside and loses every capability.  This is what
  bubblewrap does and works everywhere unprivileged user namespaces do.

Started by real root without a range of its own, sbx still uses ``range``,
over a private block of host ids that no user or /etc/subuid range has
(root writes the maps itself): the program must never be host uid 0.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Literal

from .. import tools
from ..errors import ConfigError, SetupError
from ..record import Record

PROGRAM_ID = 1000
"""The uid and gid the program runs as inside a ``range`` box."""

ROOT_RANGE = (2_000_000_000, 65536)
"""Host ids for root's boxes without an /etc/subuid range: above any user's and systemd's container ids,
below 2**31 (some tools still read ids as signed)."""

IdmapMode = Literal["auto", "range", "single"]


class IdMap(Record):
    mode: Literal["range", "single"]
    outer_uid: int
    outer_gid: int
    subuid: tuple[int, int] | None = None
    subgid: tuple[int, int] | None = None
    private: bool = False  # ROOT_RANGE, mapped by root itself rather than by newuidmap
    root: bool = False
    """The program is root of a user namespace of its own (module docstring): range mode only."""

    @property
    def program_uid(self) -> int:
        """The program's uid as the box's user namespace sees it (the files it is given are made its)."""
        if self.mode == "single":
            return self.outer_uid
        assert self.subuid
        return self.subuid[1] if self.root else PROGRAM_ID

    @property
    def program_gid(self) -> int:
        if self.mode == "single":
            return self.outer_gid
        assert self.subgid
        return self.subgid[1] if self.root else PROGRAM_ID

    def as_root(self) -> IdMap:
        """These ids with the program root of a namespace of its own; refused without a range to take its id from."""
        if self.mode != "range":
            raise ConfigError("--user 0 needs a subordinate id range (/etc/subuid and /etc/subgid, and newuidmap): "
                              "root of the box must be another host uid than the sandbox's own")
        return self.replace(root=True)

    @property
    def init_shares_program_uid(self) -> bool:
        """In single mode box init and the spawner count against the program's RLIMIT_NPROC."""
        return self.mode == "single"

    def describe(self) -> str:
        if self.root:
            assert self.subuid
            return (f"range, the program root of a user namespace of its own: its 0 = box uid {self.program_uid} = "
                    f"host uid {self.subuid[0] + self.program_uid - 1}; box root (the sandbox) = host uid "
                    f"{self.outer_uid}, not in it")
        if self.mode == "range":
            assert self.subuid and self.subgid
            return (
                f"range: box root = host uid {self.outer_uid}, program uid {PROGRAM_ID} = host uid "
                f"{self.subuid[0] + PROGRAM_ID - 1} ("
                + ("root's private range " if self.private else "subuid ") + f"{self.subuid[0]}+{self.subuid[1]})"
            )
        return (f"single: only host uid {self.outer_uid} mapped (no subuid range); the program keeps it and the "
                f"caller's supplementary groups (only a subgid range lets them be dropped), no capabilities")

    def uid_map_args(self) -> list[str]:
        """BOX HOST COUNT triples, flat: newuidmap's arguments and, joined by ':', sbx-overlayfs's uidmapping."""
        assert self.subuid
        return ["0", str(self.outer_uid), "1", "1", str(self.subuid[0]), str(self.subuid[1])]

    def gid_map_args(self) -> list[str]:
        assert self.subgid
        return ["0", str(self.outer_gid), "1", "1", str(self.subgid[0]), str(self.subgid[1])]


def subordinate_range(path: str, uid: int, name: str | None) -> tuple[int, int] | None:
    """The first usable `name:start:count` (or `uid:start:count`) line of /etc/subuid or /etc/subgid."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in {name, str(uid)}:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count >= PROGRAM_ID:
            return start, count
    return None


def detect(mode: IdmapMode = "auto") -> IdMap:
    uid, gid = os.getuid(), os.getgid()
    if mode == "single":
        return IdMap("single", uid, gid)
    if mode not in ("auto", "range"):
        raise ConfigError(f"--idmap: unknown mode {mode!r} (expected auto, range or single)")
    reason = range_unavailable_reason(uid)
    if reason is not None and uid == 0:
        _check_root_range()
        return IdMap("range", uid, gid, ROOT_RANGE, ROOT_RANGE, private=True)
    if reason is None:
        user = _user_name(uid)
        group = _group_name(gid)
        subuid = subordinate_range("/etc/subuid", uid, user)
        subgid = subordinate_range("/etc/subgid", gid, user) or subordinate_range("/etc/subgid", gid, group)
        assert subuid is not None
        if subgid is not None:
            return IdMap("range", uid, gid, subuid, subgid)
        reason = f"no /etc/subgid range of at least {PROGRAM_ID} ids for {user}"
    if mode == "range":
        raise SetupError(f"--idmap range: {reason}")
    return IdMap("single", uid, gid)


def _check_root_range() -> None:
    """ROOT_RANGE must be nobody's: refuse rather than share ids with a user or a delegated range."""
    start, count = ROOT_RANGE
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                lo, n = int(parts[1]), int(parts[2])
                if lo < start + count and start < lo + n:
                    raise SetupError(f"{path}: the range of {parts[0]} overlaps sbx's private range for root "
                                     f"({start}+{count}); give root a range of its own in {path}")


def range_unavailable_reason(uid: int) -> str | None:
    for helper in ("newuidmap", "newgidmap"):
        if tools.find(helper) is None:
            return f"{helper} not found (install package uidmap)"
    user = _user_name(uid)
    if subordinate_range("/etc/subuid", uid, user) is None:
        return f"no /etc/subuid range of at least {PROGRAM_ID} ids for {user}"
    return None


def write_single_map(ids: IdMap) -> None:
    """Map only the caller; called by the process that just unshared its user namespace."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{ids.outer_uid} {ids.outer_uid} 1\n")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{ids.outer_gid} {ids.outer_gid} 1\n")


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None
