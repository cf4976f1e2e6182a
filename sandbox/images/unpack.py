"""One layer tar, unpacked into a fresh directory as the union reads it, treating the archive as hostile.

Every entry is placed through directory fds, one component at a time and
never through a link (`O_NOFOLLOW`), so no name, symlink or hard link in the
archive can reach outside the layer: `..` components are refused, leading
`/` ignored, a hard link must name a regular file already unpacked here.
Device nodes are left out and setuid/setgid bits dropped: neither may ever
take effect.  OCI whiteouts become what both union backends read, a 0:0
character device (which Linux lets anyone make) and `user.overlay.opaque`.
Entry counts and sizes are capped as they are read, so a decompression bomb
stops with a clear error in bounded time and disk.  The caller cannot chown,
and directories keep rwx for their owner (the caller) so that later entries
and removal work: where the image's owner or mode differs, it is kept in the
`user.sbx.owner` xattr ("uid:gid:mode:rdev", mode in octal with its type),
which the FUSE union presents in the box (fuse_overlay/ownership.py).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO

from .. import fdpath
from ..budget import Budget
from ..errors import ConfigError

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OWNER_XATTR = "user.sbx.owner"
OPAQUE_XATTR = "user.overlay.opaque"
_CHUNK = 1 << 20


class ArchiveError(ConfigError):
    """A layer that cannot be unpacked safely, or one past the caps."""


@dataclass
class Owners:
    """The owners other than root that a layer's entries have: the kernel union shows them through a view of the
    layer (owned.py), or, without a subordinate id range, the FUSE union only (spec.py, --fs auto)."""

    uids: set[int] = field(default_factory=set)
    gids: set[int] = field(default_factory=set)

    def note(self, kept: bytes | None) -> None:
        if kept is not None:
            uid, gid, *_ = kept.split(b":")
            self.uids.add(int(uid))
            self.gids.add(int(gid))
        self.uids.discard(0)
        self.gids.discard(0)


@dataclass(frozen=True)
class Caps:
    """What one image may unpack to: bytes of file data and entries, over all its layers."""

    bytes: int = 16 * 2**30
    entries: int = 1_000_000


def _take(budget: Budget, size: int, entries: int, where: str) -> None:
    out = budget.take(size, entries)
    if out == "bytes":
        raise ArchiveError(f"{where}: unpacks to more than {budget.bytes} bytes (the import cap)")
    if out == "entries":
        raise ArchiveError(f"{where}: has more than {budget.entries} entries (the import cap)")


class _HashingReader:
    """The uncompressed tar stream, hashed as it is read: its sha256 is the layer's diff_id."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data


def unpack(stream: IO[bytes], into: str, budget: Budget, where: str,
           below: tuple[str, ...] = ()) -> tuple[str, Owners]:
    """Unpack the uncompressed tar `stream` into the new, empty directory `into`; returns its diff_id, and the
    owners other than root that it recorded (`OWNER_XATTR`, which the FUSE union presents, and owned.py's views).

    `below`: the unpacked layers under this one, topmost first.  A directory
    the layer does not name but needs for an entry (umoci and many real
    layers leave out a parent they did not change) takes the owner, mode and
    xattrs it has in their merged view, as containerd applies a layer onto
    its parents: else it would hide them with box root's 0755.
    """
    hashing = _HashingReader(stream)
    dirs = _Dirs(os.open(into, fdpath.DIR), below)
    try:
        with tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                _take(budget, max(member.size, 0), 1, where)
                _place(tar, member, dirs, where)
        while hashing.read(_CHUNK):  # the padding after the end marker is part of the digest
            pass
    except tarfile.TarError as e:
        raise ArchiveError(f"{where}: not a valid tar archive ({e})") from None
    finally:
        dirs.close()
    return "sha256:" + hashing.sha.hexdigest(), dirs.owners


def digest(stream: IO[bytes], budget: Budget, where: str) -> str:
    """The diff_id of the uncompressed tar `stream`, read through without unpacking; its bytes count as data."""
    sha = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        _take(budget, len(chunk), 0, where)
        sha.update(chunk)
    return "sha256:" + sha.hexdigest()


class _Dirs:
    """Fds of the layer's root and of the directories down to the last entry's parent.

    Tars list a directory's entries together, so keeping the last path open
    saves walking it again for each entry.  A directory, once made, is never
    removed or replaced during an unpack (`_clear` leaves directories), so an
    fd kept here still names the path it was opened by.
    """

    def __init__(self, root: int, below: tuple[str, ...]) -> None:
        self.root = root
        self.below = below
        self.chain: list[tuple[str, int]] = []
        self.owners = Owners()

    def parent(self, parts: list[str], where: str, name: str) -> int:
        """The directory that holds the last component, made where missing; borrowed, not to be closed."""
        want = parts[:-1]
        keep = 0
        while keep < min(len(want), len(self.chain)) and self.chain[keep][0] == want[keep]:
            keep += 1
        for _, fd in self.chain[keep:]:
            os.close(fd)
        del self.chain[keep:]
        for depth in range(keep, len(want)):
            fd, made = _enter(self.chain[-1][1] if self.chain else self.root, want[depth], 0o755, where, name)
            self.chain.append((want[depth], fd))
            if made:  # as the layers below have it
                self.owners.note(_inherit(fd, self.below, want[:depth + 1]))
        return self.chain[-1][1] if self.chain else self.root

    def close(self) -> None:
        for _, fd in self.chain:
            os.close(fd)
        os.close(self.root)


def _inherit(fd: int, below: tuple[str, ...], parts: list[str]) -> bytes | None:
    """Give the new directory `fd` the mode and user xattrs of `parts` in the merged view of the layers `below`
    (topmost first), if it is a directory there; never through a link, and never the opaque mark, which belongs
    to one layer.  The owner it took (`OWNER_XATTR`), if any."""
    for layer in below:
        found, hides = _find_dir(layer, parts)
        if found is not None:
            try:
                os.fchmod(fd, os.fstat(found).st_mode & 0o7777 | 0o700)
                attrs = os.listxattr(found)
                for attr in attrs:
                    if attr.startswith("user.") and attr != OPAQUE_XATTR:
                        os.setxattr(fd, attr, os.getxattr(found, attr))
            finally:
                os.close(found)
            return os.getxattr(fd, OWNER_XATTR) if OWNER_XATTR in attrs else None
        if hides:
            return None
    return None


def _find_dir(layer: str, parts: list[str]) -> tuple[int | None, bool]:
    """In one unpacked layer: an fd of the directory `parts` (None if it has none), and whether the layer hides
    that path in the layers under it (a whiteout, a file or a link there, or an opaque directory above it)."""
    fd = os.open(layer, fdpath.DIR)
    for part in parts:
        try:
            nxt = os.open(part, fdpath.DIR, dir_fd=fd)
        except FileNotFoundError:
            hides = _opaque(fd)
            os.close(fd)
            return None, hides
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                return None, True
            raise
        os.close(fd)
        fd = nxt
    return fd, False


def _opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _components(name: str, where: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{where}: entry {name!r} goes outside the layer ('..')")
    return parts


def _enter(parent: int, part: str, mode: int, where: str, name: str) -> tuple[int, bool]:
    """An fd of the directory `part` in `parent`, made if missing (and whether it was); never through a link."""
    try:
        return fdpath.make_dir(parent, part, mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ArchiveError(f"{where}: entry {name!r} needs {part!r} to be a directory, and it is not "
                               "(links in a layer are never followed)") from None
        raise


def _parent(root: int, parts: list[str], where: str, name: str) -> int:
    """An fd of the directory that holds the last component, never through a link; the caller closes it."""
    fd = os.dup(root)
    try:
        for part in parts[:-1]:
            nxt, _ = _enter(fd, part, 0o755, where, name)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _clear(parent: int, base: str) -> None:
    """A later entry replaces an earlier one of the same name, unless both are directories."""
    try:
        st = os.stat(base, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(base, dir_fd=parent)


def _place(tar: tarfile.TarFile, m: tarfile.TarInfo, dirs: _Dirs, where: str) -> None:
    parts = _components(m.name, where)
    if not parts:
        return  # the layer's root itself
    base = parts[-1]
    parent = dirs.parent(parts, where, m.name)
    if base == OPAQUE:
        os.setxattr(parent, OPAQUE_XATTR, b"y")
        return
    if base.startswith(WHITEOUT_PREFIX):
        try:  # hides the name in the layers below; an entry of this very layer stays (OCI)
            os.mknod(base[len(WHITEOUT_PREFIX):], stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        except FileExistsError:
            pass
        return
    if m.isdir():
        fd, _ = _enter(parent, base, 0o700, where, m.name)
        try:  # the owner (the caller: box root in the box) keeps rwx, so that later entries and removal work
            os.fchmod(fd, _mode(m) | 0o700)
            dirs.owners.note(_own(fd, m, stat.S_IFDIR))
        finally:
            os.close(fd)
        return
    _clear(parent, base)
    if m.isreg():
        fd = os.open(base, fdpath.CREATE, 0o600,
                     dir_fd=parent)
        try:
            _copy(tar.extractfile(m), fd, m.size)
            os.fchmod(fd, _mode(m))
            dirs.owners.note(_own(fd, m, stat.S_IFREG))
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
    elif m.issym():
        os.symlink(m.linkname, base, dir_fd=parent)
    elif m.islnk():
        _hard_link(dirs.root, parent, base, m, where)
    elif m.isfifo():
        os.mkfifo(base, _mode(m), dir_fd=parent)
    # device nodes are left out: they must never be effective in a box


def _hard_link(root: int, parent: int, base: str, m: tarfile.TarInfo, where: str) -> None:
    target = _components(m.linkname, where)
    if not target:
        raise ArchiveError(f"{where}: hard link {m.name!r} to the layer's root")
    src_dir = _parent(root, target, where, m.linkname)
    try:
        try:
            st = os.stat(target[-1], dir_fd=src_dir, follow_symlinks=False)
        except FileNotFoundError:
            raise ArchiveError(f"{where}: hard link {m.name!r} to {m.linkname!r}, which is not in the layer") from None
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError(f"{where}: hard link {m.name!r} to {m.linkname!r}, which is not a regular file")
        os.link(target[-1], base, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(src_dir)


def _mode(m: tarfile.TarInfo) -> int:
    return m.mode & 0o1777  # no setuid or setgid bit, ever


def _own(fd: int, m: tarfile.TarInfo, kind: int) -> bytes | None:
    """Keep the entry's owner, and a directory's mode without rwx for its owner, in OWNER_XATTR; what it kept."""
    if m.uid or m.gid or (kind == stat.S_IFDIR and _mode(m) & 0o700 != 0o700):
        kept = f"{m.uid}:{m.gid}:{kind | _mode(m):o}:0".encode()
        os.setxattr(fd, OWNER_XATTR, kept)
        return kept
    if kind == stat.S_IFDIR:  # named now, after it was made for an entry with an owner from below
        try:
            os.removexattr(fd, OWNER_XATTR)
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise
    return None


def _copy(src: IO[bytes] | None, fd: int, size: int) -> None:
    left = size
    while src is not None and left > 0:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        left -= len(chunk)

