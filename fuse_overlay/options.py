"""fuse-overlayfs compatible ``-o`` options.

Options fuse-overlayfs or mount(8) accept but that change nothing here are
tolerated so existing command lines keep working; anything else is an
error naming the option, rather than being silently ignored.
"""

import re
from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigError
from .ownership import IdMap, Unmapped

# Accepted and meaningless for this implementation (caching, threading and
# inode tricks of fuse-overlayfs, generic VFS flags the kernel applies).
IGNORED = frozenset({
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime", "relatime",
    "strictatime", "nodiratime", "diratime", "lazytime", "sync", "async", "dirsync", "auto",
    "noauto", "user", "nouser", "users", "_netdev", "nofail", "defaults", "silent", "loud",
    "default_permissions", "allow_root", "auto_unmount", "fast_ino", "threaded", "writeback",
    "noacl", "acl", "static_nlink", "volatile", "xattr_permissions", "noxattrs", "fsync",
    "index", "metacopy", "userxattr", "xino", "uuid", "nfs_export",
    "max_read", "fsname", "subtype", "context", "fscontext", "defcontext", "rootcontext",
    "plugins", "squash_to_root", "squash_to_uid", "squash_to_gid", "timeout", "debug",
})

_SIZE = re.compile(r"^(\d+)([kKmMgGtT]?)$")


@dataclass
class Options:
    lowers: list[str] = field(default_factory=list)
    upper: str | None = None
    work: str | None = None
    uid_spec: str | None = None
    gid_spec: str | None = None
    unmapped: Unmapped = "identity"
    root_uid: int = 0
    root_gid: int = 0
    quota_bytes: int | None = None
    quota_inodes: int | None = None
    whiteout: Literal["auto", "chardev", "oci"] = "auto"
    redirect_dir: bool = True  # renaming directories that have lower contents; off: EXDEV, as fuse-overlayfs
    allow_other: bool | None = None  # None: as fuse-overlayfs, only when running as (namespace) root
    read_only: bool = False
    debug: bool = False

    def uid_map(self) -> IdMap:
        if self.uid_spec:
            return IdMap.parse(self.uid_spec, self.unmapped, self.root_uid)
        return IdMap(unmapped=self.unmapped, root=self.root_uid)

    def gid_map(self) -> IdMap:
        if self.gid_spec:
            return IdMap.parse(self.gid_spec, self.unmapped, self.root_gid)
        return IdMap(unmapped=self.unmapped, root=self.root_gid)


def _split_unescaped(value: str, sep: str) -> list[str]:
    """Split on SEP except where escaped with a backslash, as fuse-overlayfs does."""
    parts, cur, it = [], [], iter(value)
    for ch in it:
        if ch == "\\":
            cur.append(next(it, ""))
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _size(name: str, value: str) -> int:
    m = _SIZE.match(value)
    if not m:
        raise ConfigError(f"option {name}={value!r}: expected a number with optional k/m/g/t suffix")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
    return int(m.group(1)) * scale


def parse_options(opts: list[str]) -> Options:
    result = Options()
    for group in opts:
        for item in _split_unescaped(group, ","):
            if not item:
                continue
            name, eq, value = item.partition("=")
            if name == "lowerdir":
                result.lowers = [p for p in _split_unescaped(value, ":") if p]
            elif name == "upperdir":
                result.upper = value
            elif name == "workdir":
                result.work = value
            elif name == "uidmapping":
                result.uid_spec = value
            elif name == "gidmapping":
                result.gid_spec = value
            elif name == "unmapped":
                if value not in ("identity", "overflow"):
                    raise ConfigError(f"option unmapped={value!r}: expected identity or overflow")
                result.unmapped = value  # type: ignore[assignment]
            elif name == "rootid":  # sbx's own: the box id the layers' root is shown as (ownership.IdMap)
                uid, sep, gid = value.partition(":")
                if not (sep and uid.isdigit() and gid.isdigit()):
                    raise ConfigError(f"option rootid={value!r}: expected UID:GID")
                result.root_uid, result.root_gid = int(uid), int(gid)
            elif name == "quota_bytes":
                result.quota_bytes = _size(name, value)
            elif name == "quota_inodes":
                result.quota_inodes = _size(name, value)
            elif name == "whiteout":
                if value not in ("auto", "chardev", "oci"):
                    raise ConfigError(f"option whiteout={value!r}: expected auto, chardev or oci")
                result.whiteout = value  # type: ignore[assignment]
            elif name == "redirect_dir":
                if value not in ("on", "follow", "nofollow", "off"):
                    raise ConfigError(f"option redirect_dir={value!r}: expected on, follow, nofollow or off")
                result.redirect_dir = value == "on"  # kernel overlayfs: only "on" creates redirects
            elif name == "allow_other":
                result.allow_other = True
            elif name in ("ro", "rw"):  # mount(8) always passes one; ro mounts read-only, layers as given
                result.read_only = name == "ro"
            elif name in IGNORED:
                if name == "debug":
                    result.debug = True
            else:
                raise ConfigError(f"unknown option {item!r}" if not eq else f"unknown option {name!r}")
    if not result.lowers:
        raise ConfigError("missing lowerdir= option")
    if (result.upper is None) != (result.work is None):
        raise ConfigError("upperdir= and workdir= must be given together")
    return result
