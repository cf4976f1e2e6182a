"""In-image owners on the kernel union: beside a layer, the entries that have an owner, really owned.

The caller cannot chown, so an unpacked layer keeps its owners and the
modes the host cannot hold in `user.sbx.owner` (unpack.py), which only the
FUSE union presents.  For kernel overlayfs, the entries of a layer that
carry that record are copied once into a view beside the layer's root,
chowned as rootless podman stores layers: in-image id N (1..count) is box id
N, host id start+N-1 of the caller's subordinate range, and 0 stays the
caller (box root).  In the kernel union's lowers the view lies just over
its layer: its directories (and the directories above its entries, with
the attributes they have in the layer) give the merged directories their
owner and mode, and its files shadow their layer's copies with the same
bytes.  Whiteouts and opaque marks stay in the layer under it, so what is
visible does not change, only who owns it.

Only a process mapped as a box is (box/userns.py) can set those owners and
remove what has them, so a fresh interpreter unshares a user namespace,
is mapped by newuidmap and newgidmap, and does the work as box root.  The
layer is sbx's own unpacking of an untrusted archive: it is walked through
directory fds, never through a link, and what the view gets from it is
bounded: regular files and directories only, no setuid or setgid bit on a
file, ids outside the range left to box root, at most `MAX_DEPTH` levels.
A view is named by the range it was made for (`owned-UID+N-GID+M`), made
under a private name and renamed into place whole; a build killed halfway
is removed by the next one.  Ids above the range show as box root, as the
kernel union showed every owner before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .. import fdpath, scratch, teardown
from .. import syscalls as sc
from ..errors import SetupError

if TYPE_CHECKING:
    from ..box.userns import IdMap

OWNERS = "owners.json"
"""In a layer's dir: {"uids": [...], "gids": [...]}, the owners other than root its entries have (unpack.py)."""
_PART = "part-"
VIEWS = ("owned-", f"{_PART}owned-")
"""The names in a layer's dir of its views and of views being made (or abandoned)."""
_CHUNK = 1 << 20


def view_name(ids: IdMap) -> str:
    """The name of the view made for `ids`' range, in the layer's dir beside `root`."""
    assert ids.subuid and ids.subgid
    return f"owned-{ids.subuid[0]}+{ids.subuid[1]}-{ids.subgid[0]}+{ids.subgid[1]}"


def recorded_owners(layer: str) -> tuple[list[int], list[int]] | None:
    """The uids and gids other than root that the layer dir's entries have (`OWNERS`); None for a layer unpacked
    before owners were noted, or whose record cannot be read: it counts as one that has any."""
    try:
        with open(os.path.join(layer, OWNERS)) as f:
            owners = json.load(f)
        return list(owners["uids"]), list(owners["gids"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def has_owners(layer: str) -> bool:
    owners = recorded_owners(layer)
    return owners is None or bool(owners[0] or owners[1])


def lowers(layers: Sequence[str], ids: IdMap) -> tuple[list[str], list[str]]:
    """The kernel union's lowers for the layer dirs `layers` (topmost first): each layer's root, under its view
    where it has owners; and those views, which `ensure` makes."""
    out, views = [], []
    for layer in layers:
        if has_owners(layer):
            views.append(os.path.join(layer, view_name(ids)))
            out.append(views[-1])
        out.append(os.path.join(layer, "root"))
    return out, views


def ensure(views: Sequence[str], ids: IdMap) -> None:
    """Make the views (of `lowers`) that are not there yet, in one mapped helper; the caller holds their layers
    pinned (no prune takes them meanwhile)."""
    missing = [os.path.dirname(view) for view in views if not os.path.isdir(view)]
    if missing:
        _helper(ids, "build", view_name(ids), *missing)


def remove(paths: Sequence[str], ids: IdMap) -> None:
    """Remove the views (and abandoned partial ones) `paths`, which only a process mapped as a box may empty."""
    if paths:
        _helper(ids, "remove", *paths)


def _helper(ids: IdMap, *argv: str) -> None:
    """Run this module's `main` in a fresh interpreter that unshares a user namespace and is mapped as a box is;
    a failure is one line."""
    import subprocess

    from ..box.starter import write_id_maps

    if ids.mode != "range":
        raise SetupError("the kernel union shows in-image owners only with a subordinate id range")
    child = subprocess.Popen([sys.executable, "-P", "-m", __name__, *argv], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdin and child.stdout
    try:
        if child.stdout.readline() == b"unshared\n":
            try:
                write_id_maps(ids, child.pid)
            except BaseException:
                child.kill()
                raise
            with contextlib.suppress(BrokenPipeError):  # (it ended: its stderr says why)
                child.stdin.write(b"mapped\n")
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
        said = child.stderr.read() if child.stderr else b""
    finally:
        child.wait()
    if child.returncode != 0:
        lines = said.decode(errors="replace").strip().splitlines()
        raise SetupError(f"the kernel union's view of in-image owners: {lines[-1] if lines else child.returncode}")


def main(argv: list[str]) -> int:
    """The helper: unshare, wait to be mapped, then build or remove as box root."""
    sc.unshare(sc.CLONE_NEWUSER)
    sys.stdout.buffer.write(b"unshared\n")
    sys.stdout.flush()
    if sys.stdin.buffer.readline() != b"mapped\n":
        return 1
    count = _mapped_count()
    try:
        if argv[0] == "build":
            for layer in argv[2:]:
                _build(layer, argv[1], count)
        elif argv[0] == "remove":
            left = [line for path in argv[1:] for line in teardown.remove_tree(path)]
            if left:
                raise SetupError("could not remove all of a view: " + "; ".join(left))
    except (OSError, SetupError) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


def _mapped_count() -> tuple[int, int]:
    """How many box ids above 0 this namespace maps (uids, gids): in-image ids past them stay box root's."""
    counts = []
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/self/{name}") as f:
            counts.append(max(int(line.split()[0]) + int(line.split()[2]) - 1 for line in f))
    return counts[0], counts[1]


def _build(layer: str, name: str, count: tuple[int, int]) -> None:
    """The view `name` of the layer dir `layer`, made under a private name (abandoned ones go first)."""
    pin = os.open(layer, fdpath.DIR)
    try:
        fcntl.flock(pin, fcntl.LOCK_SH)
        if os.path.isdir(os.path.join(layer, name)):
            return  # another box made it meanwhile
        work, lock = scratch.make(layer, f"{_PART}{name}-")
        made = teardown.identity(work)
        try:
            _copy_owned(os.path.join(layer, "root"), work, count)
            os.chmod(work, stat.S_IMODE(os.stat(os.path.join(layer, "root")).st_mode))  # not mkdtemp's 0700
            try:
                os.rename(work, os.path.join(layer, name))
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        finally:
            teardown.remove_tree(work, made)
            os.close(lock)
    finally:
        os.close(pin)


class _Target:
    """The view's directories down to the walk's current one, each made only when an entry below needs it."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.fds: list[int | None] = [root]
        self.wanted: list[tuple[str, os.stat_result, bytes | None]] = []

    def enter(self, name: str, st: os.stat_result, owner: bytes | None) -> None:
        self.fds.append(None)
        self.wanted.append((name, st, owner))

    def leave(self) -> None:
        fd = self.fds.pop()
        _, st, _ = self.wanted.pop()
        if fd is not None:  # its times, now that its entries are made
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.close(fd)

    def here(self, count: tuple[int, int]) -> int:
        """The view's directory for the walk's current one, made (with its parents) as the layer has them."""
        for depth, fd in enumerate(self.fds):
            if fd is None:
                name, st, owner = self.wanted[depth - 1]
                parent = self.fds[depth - 1]
                assert parent is not None
                os.mkdir(name, 0o700, dir_fd=parent)
                self.fds[depth] = fd = os.open(name, fdpath.DIR, dir_fd=parent)
                _set_owner(fd, st, owner, count)
        last = self.fds[-1]
        assert last is not None
        return last

    def path(self, name: str) -> str:
        """`name` in the walk's current directory, relative to the view's root (which holds only what the walk
        made: directories and files, no link)."""
        return os.path.join(*(n for n, _, _ in self.wanted), name)

    def close(self) -> None:
        for fd in self.fds:
            if fd is not None:
                os.close(fd)


def _copy_owned(src_root: str, dst_root: str, count: tuple[int, int]) -> None:
    """Copy the entries of the layer `src_root` that carry an owner record into the empty `dst_root`, with the
    directories above them; through fds, never through a link."""
    from .tar import MAX_DEPTH

    copied: dict[tuple[int, int], str] = {}  # a hard-linked file's first copy, relative to the view's root
    top = os.open(src_root, fdpath.DIR)
    stack: list[tuple[int, Iterator[str]]] = [(top, iter(fdpath.names(top)))]
    target = _Target(os.open(dst_root, fdpath.DIR))
    try:
        while stack:
            parent, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(stack.pop()[0])
                if stack:
                    target.leave()
                continue
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                continue  # links, fifos and whiteouts carry no owner record
            fd = os.open(name, fdpath.DIR if stat.S_ISDIR(st.st_mode) else fdpath.READ, dir_fd=parent)
            owner = _owner(fd)
            if stat.S_ISDIR(st.st_mode):
                if len(stack) >= MAX_DEPTH:
                    os.close(fd)
                    raise SetupError(f"{src_root}: directories nested deeper than {MAX_DEPTH} (a layer's limit)")
                stack.append((fd, iter(fdpath.names(fd))))
                target.enter(name, st, owner)
                if owner is not None:
                    target.here(count)
                continue
            try:
                if owner is None:
                    continue
                here = target.here(count)
                first = copied.get((st.st_dev, st.st_ino))
                if first is not None:  # the layer's hard links stay links
                    os.link(first, name, src_dir_fd=target.root, dst_dir_fd=here, follow_symlinks=False)
                    continue
                _copy_file(fd, st, owner, here, name, count)
                if st.st_nlink > 1:
                    copied[(st.st_dev, st.st_ino)] = target.path(name)
            finally:
                os.close(fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
        target.close()


def _owner(fd: int) -> bytes | None:
    from fuse_overlay.markers import OWNER_XATTR  # (the helper's alone: not loaded for a box's start)

    try:
        return os.getxattr(fd, OWNER_XATTR)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


def _copy_file(src: int, st: os.stat_result, owner: bytes, dst_dir: int, name: str,
               count: tuple[int, int]) -> None:
    fd = os.open(name, fdpath.CREATE, 0o600, dir_fd=dst_dir)
    try:
        while os.copy_file_range(src, fd, _CHUNK):
            pass
        _set_owner(fd, st, owner, count)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)


def _set_owner(fd: int, st: os.stat_result, owner: bytes | None, count: tuple[int, int]) -> None:
    """The owner and mode the layer's record gives (else root's, and the mode the layer has), ids past the range
    left to box root; no setuid or setgid bit on a file."""
    from fuse_overlay.ownership import Override

    uid, gid, mode = 0, 0, st.st_mode
    if owner is not None:
        record = Override.decode(owner)
        if record is None:
            raise SetupError(f"a malformed owner record {owner!r} in a layer")
        uid, gid, mode = record.uid, record.gid, record.mode
    bits = stat.S_IMODE(mode) & (0o3777 if stat.S_ISDIR(st.st_mode) else 0o1777)
    os.fchown(fd, uid if 0 <= uid <= count[0] else 0, gid if 0 <= gid <= count[1] else 0)
    os.fchmod(fd, bits)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
