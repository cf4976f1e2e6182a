"""pyfuse3 request handlers on top of :class:`~fuse_overlay.union.Union`.

Replies carry long entry/attribute timeouts (and negative entries are
cached too): the daemon is the only writer of the upper and lowers never
change, so the kernel's caches stay right and most requests never reach
this process.
"""

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, RequestContext, SetattrFields, StatvfsData

from .inodes import Node
from .markers import WH_PREFIX, MarkerWriter, is_hidden_xattr
from .ownership import IdMap
from .prepare import prepare_layers
from .quota import Quota
from .union import Union

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 86400.0 * 365
_DOT, _DOTDOT = b".", b".."

T = TypeVar("T")


def handler(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn OSErrors into FUSE replies, and never let a bug kill the session."""

    @functools.wraps(fn)
    async def wrapper(self: "UnionFS", *args: Any) -> T:
        try:
            return await fn(self, *args)
        except FUSEError:
            raise
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise FUSEError(errno.EIO) from None

    return wrapper


class UnionFS(pyfuse3.Operations):
    """A union of read-only LOWERS (topmost first) under one writable UPPER.

    Without ``upper`` the mount is read-only.  ``uid_map``/``gid_map`` say
    how host ids of the layers' files appear in the box; box ids asked for
    by chown/create that differ from that are kept in an xattr.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, lowers: Sequence[str | os.PathLike[str]], upper: str | os.PathLike[str] | None,
                 work: str | os.PathLike[str] | None, *, quota_bytes: int | None = None,
                 quota_inodes: int | None = None, uid_map: IdMap | None = None,
                 gid_map: IdMap | None = None, whiteout: Literal["auto", "chardev", "oci"] = "auto",
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        lower_b, upper_b, workdir = prepare_layers([Path(p) for p in lowers],
                                                   None if upper is None else Path(upper),
                                                   None if work is None else Path(work))
        style = whiteout
        if style == "auto":
            style = MarkerWriter.probe(workdir.path) if workdir is not None else "oci"
        self.quota = Quota(quota_bytes, quota_inodes)
        if upper_b is not None and self.quota.enabled:
            self.quota.scan(upper_b)
        self.union = Union(lower_b, upper_b, workdir, MarkerWriter(style), self.quota,
                           uid_map or IdMap(), gid_map or IdMap())
        self.timeout = timeout
        self._files: dict[int, Node] = {}
        self._dirs: dict[int, tuple[tuple[bytes, Node], ...]] = {}
        self._next_dir_fh = 1

    @property
    def whiteout_style(self) -> str:
        return self.union.markers.style

    # -- helpers -----------------------------------------------------------

    def _node(self, ino: int) -> Node:
        try:
            return self.union.table.nodes[ino]
        except KeyError:
            raise FUSEError(errno.ENOENT) from None

    def _attr(self, node: Node) -> EntryAttributes:
        cached = node.attr
        if cached is not None:
            return cached
        p = self.union.presented(node)
        st = p.st
        e = EntryAttributes()
        e.st_ino = node.ino
        e.st_mode = p.mode
        e.st_nlink = p.nlink
        e.st_uid = p.uid
        e.st_gid = p.gid
        e.st_rdev = p.rdev
        e.st_size = p.size
        e.st_blocks = st.st_blocks
        e.st_blksize = st.st_blksize
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        e.entry_timeout = self.timeout
        e.attr_timeout = self.timeout
        if not node.upper:
            node.attr = e
        return e

    def _entry(self, node: Node) -> EntryAttributes:
        attr = self._attr(node)
        node.nlookup += 1
        return attr

    def _fd_target(self, node: Node) -> bytes | int:
        if node.unlinked:
            for fd in node.fds:
                return fd
            raise FUSEError(errno.ENOENT)
        return self.union.real_path(node)

    # -- lookups and attributes ------------------------------------------------

    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: RequestContext) -> EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            node: Node | None = parent
        elif name == b"..":
            node = parent.parent or parent
        else:
            node = self.union.lookup(parent, name)
        if node is None:
            miss = EntryAttributes()
            miss.st_ino = 0
            miss.entry_timeout = self.timeout
            return miss
        return self._entry(node)

    @handler
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.union.table.forget(ino, count)

    @handler
    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return self._attr(self._node(inode))

    @handler
    async def setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields, fh: int | None,
                      ctx: RequestContext) -> EntryAttributes:
        node = self._node(inode)
        kw: dict[str, int | None] = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_size:
            kw["size"] = attr.st_size
            kw["fd"] = fh
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if kw:
            self.union.set_attrs(node, **kw)  # type: ignore[arg-type]
        return self._attr(node)

    @handler
    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        return os.readlink(self.union.real_path(self._node(inode)))

    @handler
    async def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        # Mounted with default_permissions: the kernel checks the presented modes.
        return True

    @handler
    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        u = self.union
        sv = os.statvfs(u.upper_root if u.upper_root is not None else u.lowers.roots[0])
        d = StatvfsData()
        d.f_bsize = sv.f_bsize
        d.f_frsize = sv.f_frsize
        d.f_blocks, d.f_bfree, d.f_bavail = sv.f_blocks, sv.f_bfree, sv.f_bavail
        d.f_files, d.f_ffree, d.f_favail = sv.f_files, sv.f_ffree, sv.f_favail
        q = self.quota
        if q.max_bytes is not None:
            free = max(0, q.max_bytes - q.used_bytes) // sv.f_frsize
            d.f_blocks = q.max_bytes // sv.f_frsize
            d.f_bfree = min(free, sv.f_bfree)
            d.f_bavail = min(free, sv.f_bavail)
        if q.max_inodes is not None:
            free = max(0, q.max_inodes - q.used_inodes)
            d.f_files = q.max_inodes
            d.f_ffree = min(free, sv.f_ffree)
            d.f_favail = min(free, sv.f_favail)
        d.f_namemax = sv.f_namemax - (len(WH_PREFIX) if self.whiteout_style == "oci" else 0)
        return d

    # -- namespace changes -----------------------------------------------------

    @handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: RequestContext) -> EntryAttributes:
        return self._entry(self.union.mknod(self._node(parent_inode), name, mode, rdev, ctx.uid, ctx.gid))

    @handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        return self._entry(self.union.mkdir(self._node(parent_inode), name, mode, ctx.uid, ctx.gid))

    @handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: RequestContext) -> EntryAttributes:
        return self._entry(self.union.symlink(self._node(parent_inode), name, target, ctx.uid, ctx.gid))

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: RequestContext) -> EntryAttributes:
        return self._entry(self.union.link(self._node(inode), self._node(new_parent_inode), new_name))

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        self.union.unlink(self._node(parent_inode), name)

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        self.union.rmdir(self._node(parent_inode), name)

    @handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: RequestContext) -> None:
        self.union.rename(self._node(parent_inode_old), name_old, self._node(parent_inode_new), name_new, flags)

    # -- files -----------------------------------------------------------------

    @handler
    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        node = self._node(inode)
        fd = self.union.open(node, flags)
        self._files[fd] = node
        return FileInfo(fh=fd, keep_cache=True)

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        fd, node = self.union.create(self._node(parent_inode), name, mode, flags, ctx.uid, ctx.gid)
        self._files[fd] = node
        return FileInfo(fh=fd, keep_cache=True), self._entry(node)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.union.write(fh, off, buf)

    async def flush(self, fh: int) -> None:
        # Nothing is buffered here; ENOSYS makes the kernel stop sending flushes.
        raise FUSEError(errno.ENOSYS)

    @handler
    async def release(self, fh: int) -> None:
        node = self._files.pop(fh)
        self.union.release(node, fh)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    # -- directories -------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        node = self._node(inode)
        # "." and "..", as every filesystem lists them (ls -a, find, tar expect them)
        listing = [(_DOT, node), (_DOTDOT, node.parent or node), *self.union.listing(node)]
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._dirs[fh] = listing
        return fh

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dirs[fh]
        reply = pyfuse3.readdir_reply
        for i in range(start_id, len(listing)):
            name, node = listing[i]
            if node.unlinked:
                continue
            attr = node.attr
            if attr is None:
                try:
                    attr = self._attr(node)
                except OSError:
                    continue
            if not reply(token, name, attr, i + 1):
                return
            if name not in (_DOT, _DOTDOT):  # the kernel takes no lookup reference on these two
                node.nlookup += 1

    @handler
    async def releasedir(self, fh: int) -> None:
        del self._dirs[fh]

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # -- xattrs ------------------------------------------------------------------

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        if is_hidden_xattr(name):
            raise FUSEError(pyfuse3.ENOATTR)
        target = self._fd_target(self._node(inode))
        if isinstance(target, int):
            return os.getxattr(target, name)
        return os.getxattr(target, name, follow_symlinks=False)

    @handler
    async def listxattr(self, inode: int, ctx: RequestContext) -> list[bytes]:
        target = self._fd_target(self._node(inode))
        names = os.listxattr(target) if isinstance(target, int) else os.listxattr(target, follow_symlinks=False)
        return [n for n in (x.encode() for x in names) if not is_hidden_xattr(n)]

    @handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: RequestContext) -> None:
        if is_hidden_xattr(name):
            raise FUSEError(errno.EPERM)
        self.union.setxattr(self._node(inode), name, value)

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        if is_hidden_xattr(name):
            raise FUSEError(errno.EPERM)
        self.union.removexattr(self._node(inode), name)
