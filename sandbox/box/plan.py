"""A box's root filesystem as a plan: typed steps the supervisor works out and the starter carries out, in order.

As bubblewrap's SetupOp list: what the box will be is data before anything
is mounted, so it can be printed (`sbx run --dry-run`), tested without a
box, and sent to the C starter that builds the box (starter.c).  The host
facts it depends on (which system dirs and which /etc entries the host has)
are read here, in the supervisor; the executor finds each one again under
the old root and never follows a link to it.
"""

from __future__ import annotations

import fnmatch
import os
from typing import TYPE_CHECKING, ClassVar

from ..record import Record, field, fields
from .layout import SECRETS_DIR
from .netstack import HOST_NAME

if TYPE_CHECKING:
    from .layout import Layout
    from .userns import IdMap

SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
"""Host directories every box sees read-only (or, with merged /usr, the symlinks to them)."""

ETC_ENTRIES = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
    "nsswitch.conf", "host.conf", "gai.conf", "protocols", "services", "mime.types",
    "ssl", "ca-certificates", "ca-certificates.conf", "bash.bashrc", "profile", "inputrc",
    "python3", "python3.*", "perl", "java-*", "gcc", "fonts",
)
"""What of the host's /etc a compiler or interpreter needs; secrets (shadow, ssh, ...) stay out."""

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
PROC_MASKED = ("acpi", "cmdline", "config.gz", "kallsyms", "kcore", "keys", "key-users", "latency_stats", "modules",
               "sched_debug", "scsi", "timer_list", "timer_stats", "vmallocinfo")
"""The host's own facts in /proc, which no program needs (crun masks most; the kernel's command line too):
files read as empty, directories as empty directories."""


class Step(Record):
    name: ClassVar[str]

    def describe(self) -> str:
        raise NotImplementedError


class Scratch(Step):
    """The box's own tmpfs, capped: home, /tmp and /dev/shm, the masks, a union's upper when it has none."""

    name = "scratch"
    size: int
    inodes: int

    def describe(self) -> str:
        return f"tmpfs scratch: size {self.size}, {self.inodes} inodes (home, /tmp, /dev/shm)"


class TmpfsRoot(Step):
    """A fresh, empty root, read-only once built: only what the plan puts in it."""

    name = "tmpfs-root"

    def describe(self) -> str:
        return "root: a fresh tmpfs"


class KernelUnion(Step):
    """Kernel overlayfs of host layer dirs (top first), over `upper` or, without one, the scratch tmpfs."""

    name = "kernel-union"
    lowers: tuple[str, ...]
    upper: str | None
    workdir: str | None

    def describe(self) -> str:
        return f"root: overlayfs of {', '.join(self.lowers)} over {self.upper or 'the scratch tmpfs'}"


class FuseUnion(Step):
    """The FUSE union (sbx-overlayfs), served from outside the box on the connection handed to the supervisor."""

    name = "fuse-union"

    def describe(self) -> str:
        return "root: sbx-overlayfs, served by the supervisor's daemon"


class Mirror(Step):
    """The host's `host_dir/entry` at `into/entry`, read-only: a link as the same link, else a bind."""

    name = "mirror"
    host_dir: str
    entry: str
    into: str

    def describe(self) -> str:
        return f"read-only {self.host_dir.rstrip('/')}/{self.entry} -> {self.into.rstrip('/')}/{self.entry}"


class File(Step):
    """A file made for the box (its /etc/passwd, group, hostname, hosts)."""

    name = "file"
    path: str
    text: str

    def describe(self) -> str:
        return f"file {self.path} ({len(self.text.encode())} bytes)"


class BoundFile(Step):
    """A file made for a box over a union root (its /etc/resolv.conf and hosts under --net pasta): written on the
    scratch tmpfs and bound read-only over the image's own, which stays as it is."""

    name = "bound-file"
    path: str
    text: str

    def describe(self) -> str:
        return f"file {self.path} ({len(self.text.encode())} bytes), bound over the image's"


class Writable(Step):
    """Home, /tmp and /dev/shm on the scratch tmpfs; over a union root, home is the union's own dir.  A build
    step's box has neither home nor /tmp of sbx's: it sees the image's own (docker build's view)."""

    name = "writable"
    home: str | None
    union: bool
    uid: int
    gid: int
    tmp: bool

    def describe(self) -> str:
        if self.home is None:
            return "/dev/shm on the scratch tmpfs; the image's own /tmp and dirs (a build step)"
        where = "in the union" if self.union else "on the scratch tmpfs"
        return f"writable {self.home} (owned by {self.uid}:{self.gid}, {where}), /tmp"


class Devices(Step):
    """/dev: a tmpfs with the host's harmless devices bound, a private devpts, /dev/shm and the fd links."""

    name = "devices"
    names: tuple[str, ...]

    def describe(self) -> str:
        return f"/dev: {', '.join(self.names)}, pts (private), shm, fd links; read-only"


class Proc(Step):
    """The box's procfs (hidepid=invisible), some parts read-only, the host's facts masked."""

    name = "proc"
    readonly: tuple[str, ...]
    masked: tuple[str, ...]

    def describe(self) -> str:
        return f"/proc: hidepid=invisible; read-only {', '.join(self.readonly)}; masked {', '.join(self.masked)}"


class HostBind(Step):
    """A host path the caller named, found again by its identity (hostpath.py), at `dst`."""

    name = "bind"
    src: str
    dst: str
    writable: bool
    identity: tuple[int, int] | None

    def describe(self) -> str:
        return f"{'writable' if self.writable else 'read-only'} bind {self.src} -> {self.dst}"


class Volume(Step):
    """A named volume at `dst`: a FUSE mount of its own, served by a daemon the supervisor starts on it; on its
    first use its root is given to `uid`:`gid` (-1: left as the daemon keeps it)."""

    name = "volume"
    dst: str
    read_only: bool
    uid: int
    gid: int

    def describe(self) -> str:
        given = f"; its root given to {self.uid}:{self.gid}" if self.uid >= 0 else ""
        return f"{'read-only' if self.read_only else 'writable'} volume at {self.dst} (a FUSE mount{given})"


class Tmpfs(Step):
    name = "tmpfs"
    dst: str
    size: int
    inodes: int

    def describe(self) -> str:
        return f"tmpfs {self.dst}: size {self.size}, {self.inodes} inodes"


class Secrets(Step):
    """/run/secrets: a tmpfs of its own holding one file per secret, each 0400 and the program's; read-only once
    filled.  The values travel hex-encoded (a secret may hold any byte) and are never described."""

    name = "secrets"
    names: tuple[str, ...]
    values: tuple[str, ...] = field(repr=False)  # (a plan may be logged)
    uid: int
    gid: int

    def describe(self) -> str:
        return f"{SECRETS_DIR}: {', '.join(self.names)} (a read-only tmpfs; mode 0400, owned by {self.uid}:{self.gid})"


class ReadOnlyRoot(Step):
    name = "read-only-root"

    def describe(self) -> str:
        return "root read-only"


class Pivot(Step):
    """Into the new root; the host's tree is detached, not hidden."""

    name = "pivot"

    def describe(self) -> str:
        return "pivot_root into the new root, the old root detached"


class Hostname(Step):
    name = "hostname"
    hostname: str

    def describe(self) -> str:
        return f"hostname {self.hostname}"


class Loopback(Step):
    name = "loopback"

    def describe(self) -> str:
        return "network: loopback up (and, under --net pasta, the interface pasta adds once the box is built)"


class NestedRoot(Step):
    """The program's own user namespace, for a program that is root of the box: its 0 is box uid `uid` (gid `gid`),
    its 1..N-1 the box's 1..N-1; the box's root (box init, the spawner) is not in it (userns.py)."""

    name = "nested-root"
    uid: int
    gid: int

    def describe(self) -> str:
        return (f"the program: root of a user namespace of its own (its 0 = box uid {self.uid}:{self.gid}; "
                "the box's root is not in it)")


def make(layout: Layout, ids: IdMap, host: str = "/") -> tuple[Step, ...]:
    """The steps that build `layout`'s box for the id map `ids`; `host`: where the host's tree is read."""
    union = bool(layout.lowers)
    steps: list[Step] = [Scratch(layout.disk, layout.inodes)]
    if not union:
        steps.append(TmpfsRoot())
        steps += [Mirror("/", name, "/") for name in SYSTEM_DIRS if os.path.lexists(os.path.join(host, name))]
        etc = sorted(os.listdir(os.path.join(host, "etc")))
        steps += [Mirror("/etc", name, "/etc") for pattern in ETC_ENTRIES
                  for name in (fnmatch.filter(etc, pattern) if "*" in pattern else [pattern] * (pattern in etc))]
        steps += [File("/etc/passwd", _passwd(ids, layout.home)), File("/etc/group", _group(ids)),
                  File("/etc/hostname", f"{layout.hostname}\n"), *(File(p, t) for p, t in _net_files(layout))]
    elif layout.fs == "fuse":
        steps.append(FuseUnion())
    else:
        steps.append(KernelUnion(layout.lowers, layout.upper, layout.workdir))
    steps += [Writable(None if layout.build else layout.home, union, ids.program_uid, ids.program_gid,
                       not layout.build), Devices(DEVICES),
              Proc(PROC_READONLY, PROC_MASKED)]
    steps += [HostBind(b.src, b.dst, b.writable, b.identity) for b in layout.binds]
    steps += [Volume(v.dst, v.read_only, *(v.owner or (-1, -1))) for v in layout.volumes]
    steps += [Tmpfs(dst, layout.disk, layout.inodes) for dst in layout.tmpfs]
    if union and layout.netstack is not None:
        steps += [BoundFile(path, text) for path, text in _net_files(layout)]
    if layout.secrets:
        names, values = zip(*layout.secrets, strict=True)
        steps.append(Secrets(names, tuple(value.hex() for value in values), ids.program_uid, ids.program_gid))
    if not union:
        steps.append(ReadOnlyRoot())
    steps += [Pivot(), Hostname(layout.hostname)]
    if layout.loopback:
        steps.append(Loopback())
    if ids.root:
        steps.append(NestedRoot(ids.program_uid, ids.program_gid))
    return tuple(steps)


def joined(ids: IdMap) -> tuple[Step, ...]:
    """What a process joined to a running box (sbx exec) is given: a /proc of its own pid namespace (nested in the
    box's), masked as the box's, and, when its programs are root of the box, their own user namespace."""
    return (Proc(PROC_READONLY, PROC_MASKED),
            *((NestedRoot(ids.program_uid, ids.program_gid),) if ids.root else ()))


def mount_points(steps: tuple[Step, ...]) -> list[str]:
    """Where the plan mounts over a union root (absolute paths in the box): what box init made in the root's
    upper for a mount, if the image had no such entry, is no file of the program's (a commit leaves it out)."""
    points: list[str] = []
    for step in steps:
        if isinstance(step, Writable):
            points += [p for p in (step.home, "/tmp" if step.tmp else None) if p]
        elif isinstance(step, Devices):
            points.append("/dev")
        elif isinstance(step, Proc):
            points.append("/proc")
        elif isinstance(step, (HostBind, Volume, Tmpfs)):
            points.append(step.dst)
        elif isinstance(step, BoundFile):
            points.append(step.path)
        elif isinstance(step, Secrets):
            points.append(SECRETS_DIR)
    return points


def tokens(steps: tuple[Step, ...]) -> list[str]:
    """The plan as the starter reads it (starter.c): per step its name, then its fields in order; a tuple is its
    length then its items, None is "", a bool "1" or "0".  Nothing in it can run code when read."""
    out: list[str] = []
    for step in steps:
        out.append(step.name)
        for name in fields(step):
            value = getattr(step, name)
            if isinstance(value, tuple):
                out += [str(len(value)), *map(str, value)]
            else:
                out.append("" if value is None else str(int(value)) if isinstance(value, bool) else str(value))
    return out


def describe(steps: tuple[Step, ...]) -> list[str]:
    return [f"{i + 1:2}. {step.describe()}" for i, step in enumerate(steps)]


def _net_files(layout: Layout) -> list[tuple[str, str]]:
    """/etc/hosts, and under --net pasta /etc/resolv.conf: the name servers and names the box's network has."""
    hosts = f"127.0.0.1\tlocalhost {layout.hostname}\n::1\tlocalhost ip6-localhost\n"
    if layout.netstack is None:
        return [("/etc/hosts", hosts)]
    if layout.netstack.host_gateway is not None:
        hosts += f"{layout.netstack.host_gateway}\t{HOST_NAME}\n"
    return [("/etc/hosts", hosts), ("/etc/resolv.conf", f"nameserver {layout.netstack.dns}\n")]


def _passwd(ids: IdMap, home: str) -> str:
    lines = ["root:x:0:0:root:/root:/bin/sh"]
    if ids.program_uid != 0 and not ids.root:
        lines.append(f"sbx:x:{ids.program_uid}:{ids.program_gid}:sandboxed program:{home}:/bin/sh")
    lines.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    return "\n".join(lines) + "\n"


def _group(ids: IdMap) -> str:
    lines = ["root:x:0:", "tty:x:5:"]
    if ids.program_gid != 0 and not ids.root:
        lines.append(f"sbx:x:{ids.program_gid}:")
    lines.append("nogroup:x:65534:")
    return "\n".join(lines) + "\n"
