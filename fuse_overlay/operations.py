"""pyfuse3 request handlers on top of :class:`~fuse_overlay.union.Union`.

Replies carry long entry/attribute timeouts (and negative entries are
cached too): the daemon is the only writer of the upper and lowers never
change, so the kernel's caches stay right and most requests never reach
this process.  With the libfuse shim (shim.c) open and opendir answer
ENOSYS, so the kernel also keeps file data and directory listings cached
and never asks again; every other request then names its inode as the
file handle.  Without the shim, open hands out the inode number as the
handle, so both ways the handlers only ever see inodes.
"""

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from .dirstream import FIRST_COOKIE, DirStream
from .inodes import Node
from .libfuse import (
    EntryAttributes, FileInfo, FUSEError, ReaddirToken, RequestContext, SetattrFields, StatvfsData, fast,
    noopen_active, pyfuse3,
)
from .markers import WH_PREFIX, MarkerWriter, is_hidden_xattr
from .ownership import IdMap
from .prepare import prepare_layers
from .quota import Quota
from .union import Union

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 86400.0 * 365
QUOTA_WAIT = 1.0

T = TypeVar("T")


def handler(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn OSErrors into FUSE replies, never let a bug kill the session, and hand the shim the attributes the
    request registered before the reply goes out."""

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
        finally:
            fast.flush()

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
                 redirect_dir: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
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
        self.union.redirect_dir = redirect_dir
        self.timeout = timeout
        self.noopen = False
        self._forgotten = trio.Event()

    def pin_layers(self, mountpoint: str | os.PathLike[str]) -> None:
        """Before mounting at MOUNTPOINT: keep reaching the layers that the mount will cover."""
        self.union.pin_beneath(os.fsencode(mountpoint))

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
        path = None if node.upper else self.union.real_path(node)  # for the owner override and the shim
        p = self.union.presented(node, path)
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
            regular = stat.S_ISREG(p.mode) and stat.S_ISREG(st.st_mode)
            fast.attr(node.ino, e, self.timeout, path if regular else None)
        return e

    def _entry(self, node: Node) -> EntryAttributes:
        attr = self._attr(node)
        node.nlookup += 1
        return attr

    def init(self) -> None:
        self.noopen = noopen_active()
        log.debug("open and opendir: %s", "served by the kernel" if self.noopen else "requests to the daemon")

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
            self.union.forget(ino, count)
        self._forgotten.set()
        self._forgotten = trio.Event()

    async def _within_quota(self, fn: Callable[..., T], *args: Any) -> T:
        """FN(*ARGS), waiting out an ENOSPC that removed files still hold the quota for.

        A removed file keeps its quota while the kernel may still use it.  The
        kernel forgets a file closed and removed a moment ago asynchronously,
        so "rm big; write new" may arrive before that forget: wait for forgets,
        up to QUOTA_WAIT, before giving up.  (FN fails before changing anything.)
        """
        deadline = trio.current_time() + QUOTA_WAIT
        while True:
            try:
                return fn(*args)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or not self.union.orphans:
                    raise
                with trio.move_on_at(deadline):
                    await self._forgotten.wait()
                if trio.current_time() >= deadline:
                    raise

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
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if kw:
            await self._within_quota(functools.partial(self.union.set_attrs, node, **kw))
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
        return self._entry(await self._within_quota(self.union.mknod, self._node(parent_inode), name, mode, rdev,
                                                    ctx.uid, ctx.gid))

    @handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        return self._entry(await self._within_quota(self.union.mkdir, self._node(parent_inode), name, mode, ctx.uid,
                                                    ctx.gid))

    @handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: RequestContext) -> EntryAttributes:
        return self._entry(await self._within_quota(self.union.symlink, self._node(parent_inode), name, target,
                                                    ctx.uid, ctx.gid))

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: RequestContext) -> EntryAttributes:
        return self._entry(await self._within_quota(self.union.link, self._node(inode), self._node(new_parent_inode),
                                                    new_name))

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
        if self.noopen:
            raise FUSEError(errno.ENOSYS)
        self.union.open(self._node(inode), flags)
        return FileInfo(fh=inode, keep_cache=True)

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        node = await self._within_quota(self.union.create, self._node(parent_inode), name, mode, ctx.uid, ctx.gid)
        return FileInfo(fh=node.ino, keep_cache=True), self._entry(node)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.union.read(self._node(fh), off, size)

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self._within_quota(self.union.write, self._node(fh), off, buf)

    async def flush(self, fh: int) -> None:
        # Nothing is buffered here; ENOSYS makes the kernel stop sending flushes.
        raise FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        # Descriptors belong to nodes (OpenFiles), not to opens.
        return None

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        node = self._node(fh)
        # a copy: OpenFiles may close its own descriptor while the thread syncs
        fd = os.dup(self.union.files.get(node, self.union.real_path(node), writable=False))
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
        finally:
            os.close(fd)

    # -- directories -------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        if self.noopen:
            raise FUSEError(errno.ENOSYS)
        return inode

    @handler
    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        d = self._node(fh)
        if d.stream is None:
            d.stream = DirStream()
        reply = pyfuse3.readdir_reply
        last = start_id
        for cookie, name, node in d.stream.after(d, self.union.listing(d), start_id):
            last = cookie
            if node.unlinked:
                continue
            attr = node.attr
            if attr is None:
                try:
                    attr = self._attr(node)
                except OSError:
                    continue
            if not reply(token, name, attr, cookie):
                return
            if cookie >= FIRST_COOKIE:  # the kernel takes no lookup reference on "." and ".."
                node.nlookup += 1
        if last:  # to the end: the kernel's next readdir, from `last`, is answered empty by the shim
            fast.listed(d.ino, last)

    async def releasedir(self, fh: int) -> None:
        return None

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # -- xattrs ------------------------------------------------------------------

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        if is_hidden_xattr(name):
            raise FUSEError(pyfuse3.ENOATTR)
        return os.getxattr(self.union.real_path(self._node(inode)), name, follow_symlinks=False)

    @handler
    async def listxattr(self, inode: int, ctx: RequestContext) -> list[bytes]:
        names = os.listxattr(self.union.real_path(self._node(inode)), follow_symlinks=False)
        return [n for n in (x.encode() for x in names) if not is_hidden_xattr(n)]

    @handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: RequestContext) -> None:
        if is_hidden_xattr(name):
            raise FUSEError(errno.EPERM)
        await self._within_quota(self.union.setxattr, self._node(inode), name, value)

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        if is_hidden_xattr(name):
            raise FUSEError(errno.EPERM)
        self.union.removexattr(self._node(inode), name)
