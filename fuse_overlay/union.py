"""The merged tree: name resolution across layers and every mutation.

All methods are synchronous and raise OSError; the FUSE glue turns those
into replies.  Handlers never await in the middle of a mutation, so the
single trio thread serialises them and no locking is needed.
"""

import contextlib
import errno
import os
import stat
from dataclasses import dataclass

from . import copyup
from .copyup import WorkDir
from .inodes import InodeTable, Node
from .layers import Lowers
from .libfuse import fast
from .markers import WH_PREFIX, MarkerWriter, is_chardev_whiteout, is_opaque_dir, is_reserved_name, remove_whiteout
from .openfiles import OpenFiles
from .ownership import IdMap, Override, can_hold_xattr, host_mode, read_override, write_override
from .quota import Quota, object_bytes
from .syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, rename2


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _has_whiteout(dirpath: bytes, name: bytes) -> bool:
    """Does DIRPATH hold a whiteout for NAME, in either dialect?"""
    try:
        if is_chardev_whiteout(os.lstat(dirpath + b"/" + name)):
            return True
    except FileNotFoundError:
        pass
    return os.path.lexists(dirpath + b"/" + WH_PREFIX + name)


@dataclass(slots=True)
class Presented:
    """What the box sees of an object, next to the real stat it came from."""

    st: os.stat_result
    mode: int
    uid: int
    gid: int
    rdev: int
    nlink: int
    size: int


class Union:
    def __init__(self, lowers: list[bytes], upper: bytes | None, work: WorkDir | None,
                 markers: MarkerWriter, quota: Quota, uid_map: IdMap, gid_map: IdMap) -> None:
        self.lowers = Lowers(lowers)
        self.upper_root = upper
        self.work = work
        self.markers = markers
        self.quota = quota
        self.uid_map = uid_map
        self.gid_map = gid_map
        self.table = InodeTable()
        self.files = OpenFiles()
        self.orphans: set[int] = set()  # inodes of removed files kept in the work dir
        self.redirect_dir = True  # directories with lower contents can be renamed (copied up whole first)
        self._pins: list[int] = []  # descriptors of layers a path mount covers (pin_beneath)
        lower_layers = self.lowers.root_layers()
        upper_present = upper is not None
        if upper is not None and is_opaque_dir(upper):
            lower_layers = ()
        lower_st = os.lstat(self.lowers.roots[lower_layers[0]]) if lower_layers else None
        self.root = self.table.add_root(upper_present, lower_layers, lower_st)

    # -- paths -------------------------------------------------------------

    def pin_beneath(self, mountpoint: bytes) -> None:
        """Reach each layer at or below MOUNTPOINT through a descriptor opened now, before the mount.

        Once mounted, MOUNTPOINT's path leads into this very filesystem: a
        layer reached by its path would make the daemon wait on itself.
        ``/proc/self/fd/N`` leads to the directory that was opened, the one
        the mount now covers.  Other layers keep their plain paths.
        """
        mnt = os.path.realpath(mountpoint).rstrip(b"/") + b"/"

        def pinned(path: bytes) -> bytes:
            if not (os.path.realpath(path) + b"/").startswith(mnt):
                return path
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            via = b"/proc/self/fd/%d" % fd
            try:
                same = os.path.samestat(os.stat(via), os.fstat(fd))
            except OSError:
                same = False
            if not same:  # no /proc: nothing better to offer
                os.close(fd)
                return path
            self._pins.append(fd)
            return via

        self.lowers.roots[:] = [pinned(r) for r in self.lowers.roots]
        if self.upper_root is not None:
            self.upper_root = pinned(self.upper_root)
        if self.work is not None:
            self.work.path = pinned(self.work.path)

    def upper_path(self, node: Node) -> bytes:
        assert self.upper_root is not None
        rel = node.rel()
        return self.upper_root + b"/" + rel if rel else self.upper_root

    def real_path(self, node: Node) -> bytes:
        if node.orphan is not None:
            return node.orphan
        if not node.upper:
            return self.lowers.path(node.lowers[0], node.rel())
        if node.unlinked:  # its old name may hold something else by now
            raise _err(errno.ENOENT)
        return self.upper_path(node)

    def _writable(self) -> None:
        if self.upper_root is None:
            raise _err(errno.EROFS)

    # -- resolution --------------------------------------------------------

    def lookup(self, parent: Node, name: bytes) -> Node | None:
        """The object NAME in PARENT, or None.

        Only objects are cached, never misses: the kernel keeps negative
        entries itself, and a program probing any number of names that do not
        exist (or creating and removing them) must not make the daemon hold
        each one.  A miss costs an lstat at most.
        """
        try:
            return parent.children[name]
        except KeyError:
            pass
        node = self._resolve(parent, name)
        if node is not None:
            parent.children[name] = node
        return node

    def _resolve(self, parent: Node, name: bytes) -> Node | None:
        if is_reserved_name(name):
            return None
        prel = parent.rel()
        rel = prel + b"/" + name if prel else name
        upper_is_dir = False
        check_lowers = True
        if parent.upper:
            up = self.upper_root + b"/" + rel  # type: ignore[operator]
            try:
                st = os.lstat(up)
            except FileNotFoundError:
                if parent.lowers and os.path.lexists(self.upper_root + b"/" + (prel + b"/" if prel else b"") + WH_PREFIX + name):  # type: ignore[operator]
                    return None
            else:
                if is_chardev_whiteout(st):
                    return None
                if not stat.S_ISDIR(st.st_mode):
                    return self._file_node(parent, name, True, (), None, st)
                upper_is_dir = True
                check_lowers = not is_opaque_dir(up)
        layers: list[int] = []
        top_st: os.stat_result | None = None
        if check_lowers:
            for idx in parent.lowers:
                sc = self.lowers.scan(idx, prel)
                if sc is None:
                    continue
                if name in sc.names:
                    st = os.lstat(self.lowers.path(idx, rel))
                    if stat.S_ISDIR(st.st_mode):
                        layers.append(idx)
                        if top_st is None:
                            top_st = st
                        child = self.lowers.scan(idx, rel)
                        if child is not None and child.opaque:
                            break
                    else:
                        if not upper_is_dir and not layers:
                            return self._file_node(parent, name, False, (idx,), st, st)
                        break
                if name in sc.whiteouts or sc.opaque:
                    break
        if not upper_is_dir and not layers:
            return None
        return self.table.new(parent, name, True, upper_is_dir, tuple(layers), top_st)

    def _file_node(self, parent: Node, name: bytes, upper: bool, lowers: tuple[int, ...],
                   lower_st: os.stat_result | None, st: os.stat_result) -> Node:
        """Upper hard links share one node; lower ones do not.

        FUSE names no dentry in inode requests, so a node shared by several
        lower names could not tell which name a write went through; each
        lower name is its own node and copy-up splits it from the others,
        as kernel overlayfs without ``index`` does.
        """
        if upper and st.st_nlink > 1:
            known = self.table.by_key.get((st.st_dev, st.st_ino))
            if known is not None and not known.unlinked:
                known.aliases.append((parent, name))
                return known
        node = self.table.new(parent, name, False, upper, lowers, lower_st)
        if upper and st.st_nlink > 1:
            self.table.register_key(node, st)
        return node

    def _relist(self, d: Node) -> None:
        """D's names changed: list it again, in Python, to the end (the shim answered past the old end)."""
        d.listing = None
        fast.unlisted(d.ino)

    def listing(self, d: Node) -> tuple[tuple[bytes, Node], ...]:
        if d.listing is not None:
            return d.listing
        names: dict[bytes, None] = {}
        if d.upper:
            with os.scandir(self.upper_path(d)) as it:
                for entry in it:
                    names[entry.name] = None
        rel = d.rel()
        for idx in d.lowers:
            sc = self.lowers.scan(idx, rel)
            if sc is not None:
                names.update(dict.fromkeys(sc.names))
        result = []
        for name in names:
            node = self.lookup(d, name)
            if node is not None:
                result.append((name, node))
        d.listing = tuple(result)
        return d.listing

    # -- attributes --------------------------------------------------------

    def real_stat(self, node: Node) -> os.stat_result:
        if not node.upper:
            assert node.lower_st is not None
            return node.lower_st
        return os.lstat(self.real_path(node))

    def presented(self, node: Node, path: bytes | None = None) -> Presented:
        """`path`: the node's real path, when the caller has it already."""
        st = self.real_stat(node)
        mode = st.st_mode
        ov: Override | None = node.mem_override
        if ov is None and can_hold_xattr(mode):
            ov = read_override(path or self.real_path(node))
        if ov is None:
            uid = self.uid_map.to_box(st.st_uid)
            gid = self.gid_map.to_box(st.st_gid)
            rdev = st.st_rdev
        else:
            uid, gid, rdev = self.uid_map.view(ov.uid), self.gid_map.view(ov.gid), ov.rdev
            if stat.S_IFMT(ov.mode) and stat.S_ISREG(mode):
                mode = ov.mode
            else:
                mode = stat.S_IFMT(mode) | stat.S_IMODE(ov.mode)
        nlink = st.st_nlink
        if node.is_dir and (len(node.lowers) + node.upper) > 1:
            nlink = 1
        return Presented(st, mode, uid, gid, rdev, nlink, st.st_size)

    def _set_owner(self, node: Node, target: bytes, uid: int, gid: int, mode: int,
                   rdev: int = 0, fresh: bool = False) -> None:
        """Record what the box asked for wherever the real object cannot hold it."""
        st = os.lstat(target)
        natural = (self.uid_map.to_box(st.st_uid), self.gid_map.to_box(st.st_gid), st.st_mode, st.st_rdev)
        ov = None if natural == (uid, gid, mode, rdev) else \
            Override(self.uid_map.view(uid), self.gid_map.view(gid), mode, rdev)
        if can_hold_xattr(st.st_mode):
            node.mem_override = None
            if ov is not None or not fresh:
                write_override(target, ov)
        else:
            node.mem_override = ov

    # -- copy-up -----------------------------------------------------------

    def ensure_upper(self, node: Node) -> None:
        """Copy NODE (and its parents) into the upper unless already there."""
        if node.upper:
            return
        self._writable()
        assert node.parent is not None and self.work is not None
        if not node.unlinked:
            self.ensure_upper(node.parent)
        pres = self.presented(node)
        src = self.lowers.path(node.lowers[0], node.rel())
        tmp = self.work.temp()
        copyup.copy_object(src, pres.st, tmp, self.quota)
        try:
            node.upper = True
            self._set_owner(node, tmp, pres.uid, pres.gid, pres.mode, pres.rdev, fresh=True)
            os.utime(tmp, ns=(pres.st.st_atime_ns, pres.st.st_mtime_ns), follow_symlinks=False)
            if node.unlinked:  # written through a descriptor of a removed name: the copy is an orphan
                node.orphan = tmp
                self.orphans.add(node.ino)
            else:
                copyup.publish(tmp, self.upper_path(node), self.upper_path(node.parent))
        except BaseException:
            node.upper = False
            raise
        node.attr = None
        fast.forget(node.ino)
        if not node.is_dir:
            node.lowers = ()
            node.lower_st = None
            self.files.drop(node)  # later reads must see the copy

    def _copy_up_tree(self, node: Node) -> None:
        """Bring a whole merged directory into the upper, then cut it from the lowers.

        Each step keeps the merged view unchanged; after the last one the
        directory is opaque and can move anywhere like a plain upper dir.
        """
        self.ensure_upper(node)
        for _name, child in self.listing(node):
            if child.is_dir:
                self._copy_up_tree(child)
            else:
                self.ensure_upper(child)
        if node.lowers:
            self.markers.mark_opaque(self.upper_path(node))
            node.lowers = ()
            node.lower_st = None
            self._relist(node)
            node.attr = None

    # -- creating ----------------------------------------------------------

    def _prepare_new(self, parent: Node, name: bytes) -> bytes:
        """Make room for a new entry and charge its name; returns the upper directory path.

        A whiteout in its place hands its charge over to the new name.  The
        caller refunds the name if it then fails to make the entry.
        """
        self._writable()
        if is_reserved_name(name):
            raise _err(errno.EINVAL)
        if self.lookup(parent, name) is not None:
            raise _err(errno.EEXIST)
        self.ensure_upper(parent)
        updir = self.upper_path(parent)
        self.quota.charge_inode(0 if _has_whiteout(updir, name) else 1)
        remove_whiteout(updir, name)
        return updir

    def _owner_for(self, parent: Node, uid: int, gid: int, mode: int) -> tuple[int, int]:
        """setgid directories hand their group (and, to subdirs, the bit) down."""
        pp = self.presented(parent)
        if pp.mode & stat.S_ISGID:
            gid = pp.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return gid, mode

    def _uncharge(self) -> None:
        self.quota.charge_inode(-1)

    def _attach(self, parent: Node, name: bytes, node: Node) -> Node:
        parent.children[name] = node
        self._relist(parent)
        return node

    def create(self, parent: Node, name: bytes, mode: int, uid: int, gid: int) -> Node:
        updir = self._prepare_new(parent, name)
        path = updir + b"/" + name
        try:
            gid, mode = self._owner_for(parent, uid, gid, mode)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, host_mode(mode))
        except BaseException:
            self._uncharge()
            raise
        node = self.table.new(parent, name, False, True, (), None)
        self.files.put(node, fd, writable=True)
        self._set_owner(node, path, uid, gid, stat.S_IFREG | stat.S_IMODE(mode), fresh=True)
        return self._attach(parent, name, node)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Node:
        updir = self._prepare_new(parent, name)
        path = updir + b"/" + name
        try:
            gid, mode = self._owner_for(parent, uid, gid, mode)
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                # The host refuses device nodes (and a 0:0 one would read as a
                # whiteout): keep an empty file and present the device.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            else:
                os.mknod(path, stat.S_IFMT(mode) | host_mode(mode), 0)
        except BaseException:
            self._uncharge()
            raise
        node = self.table.new(parent, name, False, True, (), None)
        self._set_owner(node, path, uid, gid, mode, rdev if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else 0,
                        fresh=True)
        return self._attach(parent, name, node)

    def mkdir(self, parent: Node, name: bytes, mode: int, uid: int, gid: int) -> Node:
        updir = self._prepare_new(parent, name)
        assert self.work is not None
        tmp = self.work.temp()
        try:
            gid, mode = self._owner_for(parent, uid, gid, stat.S_IFDIR | stat.S_IMODE(mode))
            os.mkdir(tmp, host_mode(mode))
            node = self.table.new(parent, name, True, True, (), None)
            if self.lowers.has_name(parent.lowers, parent.rel(), name):
                self.markers.mark_opaque(tmp)
            self._set_owner(node, tmp, uid, gid, mode, fresh=True)
            os.rename(tmp, updir + b"/" + name)
        except BaseException:
            self._uncharge()
            with contextlib.suppress(OSError):
                os.rmdir(tmp)
            raise
        return self._attach(parent, name, node)

    def symlink(self, parent: Node, name: bytes, target: bytes, uid: int, gid: int) -> Node:
        updir = self._prepare_new(parent, name)
        path = updir + b"/" + name
        try:
            gid, _ = self._owner_for(parent, uid, gid, stat.S_IFLNK)
            self.quota.charge_bytes(len(target))  # a symlink's size is its target's
        except BaseException:
            self._uncharge()
            raise
        try:
            os.symlink(target, path)
        except BaseException:
            self._uncharge()
            self.quota.charge_bytes(-len(target))
            raise
        node = self.table.new(parent, name, False, True, (), None)
        self._set_owner(node, path, uid, gid, stat.S_IFLNK | 0o777, fresh=True)
        return self._attach(parent, name, node)

    def link(self, node: Node, parent: Node, name: bytes) -> Node:
        if node.is_dir:
            raise _err(errno.EPERM)
        updir = self._prepare_new(parent, name)
        try:
            self.ensure_upper(node)
            src = self.upper_path(node)
            os.link(src, updir + b"/" + name)
        except BaseException:
            self._uncharge()
            raise
        if node.key is None:
            self.table.register_key(node, os.lstat(src))
        node.aliases.append((parent, name))
        return self._attach(parent, name, node)

    # -- removing ----------------------------------------------------------

    def _detach(self, node: Node, parent: Node, name: bytes) -> None:
        """Drop one name of NODE; the node lives on while open or looked up."""
        parent.children.pop(name, None)
        self._relist(parent)
        if node.parent is parent and node.name == name:
            if node.aliases:
                node.move(*node.aliases.pop())
                return
            node.unlinked = True
            self.table.drop_key(node)
            if node.nlookup <= 0:
                self.table.nodes.pop(node.ino, None)
                self._discard(node)
        else:
            node.aliases = [a for a in node.aliases if not (a[0] is parent and a[1] == name)]

    def _remove_upper_name(self, node: Node, parent: Node, name: bytes, path: bytes, st: os.stat_result) -> None:
        """Remove PATH, the upper name NAME of NODE in PARENT (ST: its lstat).

        The box may still read or write a regular file by inode after its last
        name is gone, so that one moves into the work dir until forgotten, and
        keeps its quota until then, as an open deleted file keeps its blocks.
        """
        if stat.S_ISREG(st.st_mode) and node.parent is parent and node.name == name and not node.aliases:
            assert self.work is not None
            node.orphan = self.work.temp()
            os.rename(path, node.orphan)
            self.orphans.add(node.ino)
            return
        self._unlink_charged(path, st)

    def _unlink_charged(self, path: bytes, st: os.stat_result) -> None:
        """Remove the name PATH (ST: its lstat) and give back its charge, and the object's bytes with its last name."""
        nbytes = object_bytes(path, st) if st.st_nlink <= 1 else 0
        os.unlink(path)
        self.quota.charge_inode(-1)
        self.quota.charge_bytes(-nbytes)

    def forget(self, ino: int, count: int) -> None:
        node = self.table.forget(ino, count)
        if node is not None:
            self._discard(node)

    def _discard(self, node: Node) -> None:
        """Release what a node that is gone for good still holds."""
        self.files.drop(node)
        fast.forget(node.ino)
        if node.orphan is not None:
            with contextlib.suppress(FileNotFoundError):  # a purged work dir
                self._unlink_charged(node.orphan, os.lstat(node.orphan))
            node.orphan = None
            self.orphans.discard(node.ino)

    def _whiteout_if_needed(self, parent: Node, name: bytes) -> None:
        if self.lowers.has_name(parent.lowers, parent.rel(), name):
            self.quota.charge_inode(1)
            try:
                self.markers.whiteout(self.upper_path(parent), name)
            except BaseException:
                self._uncharge()
                raise

    def unlink(self, parent: Node, name: bytes) -> None:
        self._writable()
        node = self.lookup(parent, name)
        if node is None:
            raise _err(errno.ENOENT)
        if node.is_dir:
            raise _err(errno.EISDIR)
        self.ensure_upper(parent)
        if node.upper:
            path = self.upper_path(parent) + b"/" + name
            self._remove_upper_name(node, parent, name, path, os.lstat(path))
        self._whiteout_if_needed(parent, name)
        self._detach(node, parent, name)

    def rmdir(self, parent: Node, name: bytes) -> None:
        self._writable()
        node = self.lookup(parent, name)
        if node is None:
            raise _err(errno.ENOENT)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if self.listing(node):
            raise _err(errno.ENOTEMPTY)
        self.ensure_upper(parent)
        if node.upper:
            assert self.work is not None
            self.work.discard_tree(self.upper_path(node), self.quota)
        self._whiteout_if_needed(parent, name)
        self._detach(node, parent, name)

    # -- rename ------------------------------------------------------------

    def _check_movable(self, node: Node) -> None:
        """Without redirect_dir, a directory with lower contents cannot move (EXDEV, as kernel overlayfs
        and fuse-overlayfs answer; mv then copies it)."""
        if node.is_dir and node.lowers and not self.redirect_dir:
            raise _err(errno.EXDEV)

    def _make_movable(self, node: Node) -> None:
        if node.is_dir and node.lowers:
            self._copy_up_tree(node)
            for other in list(self.table.nodes.values()):
                if other.is_dir and other.lowers and other.is_under(node):
                    other.lowers = ()
                    self._relist(other)
        else:
            self.ensure_upper(node)

    def rename(self, p1: Node, n1: bytes, p2: Node, n2: bytes, flags: int) -> None:
        self._writable()
        if is_reserved_name(n2):
            raise _err(errno.EINVAL)
        src = self.lookup(p1, n1)
        if src is None:
            raise _err(errno.ENOENT)
        dst = self.lookup(p2, n2)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise _err(errno.ENOENT)
            self._exchange(p1, n1, src, p2, n2, dst)
            return
        if dst is not None and flags & RENAME_NOREPLACE:
            raise _err(errno.EEXIST)
        if dst is src:
            return
        if dst is not None:
            if src.is_dir and not dst.is_dir:
                raise _err(errno.ENOTDIR)
            if not src.is_dir and dst.is_dir:
                raise _err(errno.EISDIR)
            if dst.is_dir and self.listing(dst):
                raise _err(errno.ENOTEMPTY)
        self._check_movable(src)
        self._make_movable(src)
        self.ensure_upper(p1)
        self.ensure_upper(p2)
        up1 = self.upper_path(p1) + b"/" + n1
        updir2 = self.upper_path(p2)
        up2 = updir2 + b"/" + n2
        replaced: os.stat_result | None = None
        if dst is not None and dst.upper:
            if dst.is_dir:
                assert self.work is not None
                self.work.discard_tree(up2, self.quota)
            else:
                replaced = os.lstat(up2)
        elif dst is None and remove_whiteout(updir2, n2):
            self._uncharge()
        if src.is_dir and self.lowers.has_name(p2.lowers, p2.rel(), n2):
            self.markers.mark_opaque(up1)
        if replaced is not None:
            assert dst is not None
            self._remove_upper_name(dst, p2, n2, up2, replaced)
        os.rename(up1, up2)
        self._whiteout_if_needed(p1, n1)
        if dst is not None:
            self._detach(dst, p2, n2)
        self._move_name(src, p1, n1, p2, n2)

    def _move_name(self, node: Node, p1: Node, n1: bytes, p2: Node, n2: bytes) -> None:
        p1.children.pop(n1, None)
        self._relist(p1)
        if node.parent is p1 and node.name == n1:
            node.move(p2, n2)
        else:
            node.aliases = [(p2, n2) if (a[0] is p1 and a[1] == n1) else a for a in node.aliases]
        p2.children[n2] = node
        self._relist(p2)

    def _exchange(self, p1: Node, n1: bytes, a: Node, p2: Node, n2: bytes, b: Node) -> None:
        self._check_movable(a)
        self._check_movable(b)
        self._make_movable(a)
        self._make_movable(b)
        self.ensure_upper(p1)
        self.ensure_upper(p2)
        up1 = self.upper_path(p1) + b"/" + n1
        up2 = self.upper_path(p2) + b"/" + n2
        if a.is_dir and self.lowers.has_name(p2.lowers, p2.rel(), n2):
            self.markers.mark_opaque(up1)
        if b.is_dir and self.lowers.has_name(p1.lowers, p1.rel(), n1):
            self.markers.mark_opaque(up2)
        rename2(up1, up2, RENAME_EXCHANGE)
        for node, old_p, old_n, new_p, new_n in ((a, p1, n1, p2, n2), (b, p2, n2, p1, n1)):
            if node.parent is old_p and node.name == old_n:
                node.move(new_p, new_n)
            else:
                node.aliases = [(new_p, new_n) if (x[0] is old_p and x[1] == old_n) else x for x in node.aliases]
        p1.children[n1] = b
        p2.children[n2] = a
        self._relist(p1)
        self._relist(p2)

    # -- attributes: changes -------------------------------------------------

    def set_attrs(self, node: Node, *, mode: int | None = None, uid: int | None = None,
                  gid: int | None = None, size: int | None = None,
                  atime_ns: int | None = None, mtime_ns: int | None = None) -> None:
        self._writable()
        self.ensure_upper(node)
        target = self.real_path(node)
        if size is not None:
            self._truncate(target, size)
        if mode is not None or uid is not None or gid is not None:
            pres = self.presented(node)
            new_mode = pres.mode if mode is None else (stat.S_IFMT(pres.mode) | stat.S_IMODE(mode))
            if not stat.S_ISLNK(pres.st.st_mode):
                os.chmod(target, host_mode(new_mode))
            self._set_owner(node, target, pres.uid if uid is None else uid, pres.gid if gid is None else gid,
                            new_mode, pres.rdev)
        if atime_ns is not None or mtime_ns is not None:
            st = os.lstat(target)
            times = (st.st_atime_ns if atime_ns is None else atime_ns,
                     st.st_mtime_ns if mtime_ns is None else mtime_ns)
            os.utime(target, ns=times, follow_symlinks=False)
        node.attr = None

    def _truncate(self, path: bytes, size: int) -> None:
        st = os.lstat(path)
        self.quota.charge_bytes(size - st.st_size)
        try:
            os.truncate(path, size)
        except BaseException:
            self.quota.charge_bytes(st.st_size - size)
            raise

    # -- data ----------------------------------------------------------------

    def open(self, node: Node, flags: int) -> None:
        """Only when the kernel sends opens (no libfuse shim): then copy-up and O_TRUNC happen here."""
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            self.ensure_upper(node)
        if flags & os.O_TRUNC:
            self._truncate(self.real_path(node), 0)

    def read(self, node: Node, off: int, size: int) -> bytes:
        return os.pread(self.files.get(node, self.real_path(node), writable=False), size, off)

    def write(self, node: Node, off: int, data: bytes) -> int:
        self.ensure_upper(node)
        fd = self.files.get(node, self.real_path(node), writable=True)
        if self.quota.max_bytes is None:
            return os.pwrite(fd, data, off)
        size = os.fstat(fd).st_size
        growth = max(0, off + len(data) - size)
        self.quota.charge_bytes(growth)
        try:
            written = os.pwrite(fd, data, off)
        except BaseException:
            self.quota.charge_bytes(-growth)
            raise
        self.quota.charge_bytes(max(0, off + written - size) - growth)
        return written

    # -- xattrs --------------------------------------------------------------

    def _xattr_charge(self, path: bytes, name: bytes) -> int:
        try:
            return len(name) + len(os.getxattr(path, name, follow_symlinks=False))
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
            return 0

    def setxattr(self, node: Node, name: bytes, value: bytes) -> None:
        """Set an xattr, charged as the bytes of its name and value (replacing one gives the old charge back)."""
        self._writable()
        self.ensure_upper(node)
        path = self.real_path(node)
        delta = len(name) + len(value) - self._xattr_charge(path, name)
        self.quota.charge_bytes(delta)
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except BaseException:
            self.quota.charge_bytes(-delta)
            raise

    def removexattr(self, node: Node, name: bytes) -> None:
        self._writable()
        os.getxattr(self.real_path(node), name, follow_symlinks=False)
        self.ensure_upper(node)
        path = self.real_path(node)
        charge = self._xattr_charge(path, name)
        os.removexattr(path, name, follow_symlinks=False)
        self.quota.charge_bytes(-charge)

