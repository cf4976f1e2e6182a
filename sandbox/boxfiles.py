"""Copying files into and out of a box's writable dirs, safely against the program, and emptying them.

Box init does the opening, inside the box, with openat2 confined beneath
/box, /tmp or /dev/shm with no symlinks at all (RESOLVE_NO_SYMLINKS also
refuses magic links like /proc/self/fd/N), non-blocking (a planted FIFO
cannot stall it), and only for regular files.  The supervisor then reads or
fills the file through the fd alone, so it never resolves a path the
program controls.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from . import syscalls as sc
from . import teardown
from .mounts import WORK_DIR

_RESOLVE = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
_BASE_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
"""No O_NOFOLLOW: RESOLVE_NO_SYMLINKS refuses a link anywhere (ELOOP), where O_NOFOLLOW|O_DIRECTORY says ENOTDIR."""


def writable_dirs(home: str = WORK_DIR) -> tuple[str, ...]:
    """The box's writable dirs: its home (the working directory, /box unless the layout names another), /tmp and
    /dev/shm."""
    return home, "/tmp", "/dev/shm"


def locate(path: str, home: str = WORK_DIR) -> tuple[str, str]:
    """The writable dir holding `path` (a relative path is relative to `home`), and the path beneath it ("." for
    the dir itself)."""
    norm = os.path.normpath(path)
    if not norm.startswith("/"):
        if norm == ".." or norm.startswith("../"):
            raise ValueError(f"{path}: not a file under {home}")
        return home, norm
    dirs = writable_dirs(home)
    for root in dirs:
        if norm == root or norm.startswith(root + "/"):
            return root, os.path.relpath(norm, root)
    raise ValueError(f"{path}: not under {', '.join(dirs[:-1])} or {dirs[-1]}")


def _open_beneath(path: str, home: str, flags: int, mode: int = 0, owner: tuple[int, int] | None = None,
                  directory: bool = False) -> int:
    """Open `path` in its writable dir, never through a symlink, and only if it is a regular file (or a directory).

    With `owner`, missing directories on the way are made, owned by it: a
    tree is copied in file by file.
    """
    parent, name = _parent_beneath(path, home, owner)
    try:
        fd = _openat(parent, name, flags, mode)
    finally:
        os.close(parent)
    kind = os.fstat(fd).st_mode
    if not (stat.S_ISREG(kind) or directory and stat.S_ISDIR(kind)):
        os.close(fd)
        raise OSError(f"{path}: not a regular file" + (" or directory" if directory else ""))
    return fd


def _parent_beneath(path: str, home: str, owner: tuple[int, int] | None) -> tuple[int, str]:
    """The directory that holds `path` in its writable dir (an fd, never reached through a symlink), and the
    last name ("." for the writable dir itself); with `owner`, directories missing on the way are made, owned
    by it."""
    root_dir, rel = locate(path, home)
    parent = os.open(root_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in rel.split("/")[:-1]:
            if owner is not None:
                try:
                    os.mkdir(name, 0o755, dir_fd=parent)
                    os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
                except FileExistsError:
                    pass
            below = _openat(parent, name, os.O_RDONLY | os.O_DIRECTORY, 0)
            os.close(parent)
            parent = below
    except BaseException:
        os.close(parent)
        raise
    return parent, os.path.basename(rel)


def _openat(parent: int, name: str, flags: int, mode: int) -> int:
    try:
        return sc.openat2(parent, name, flags | _BASE_FLAGS, mode, _RESOLVE)
    except OSError as e:  # box init names the path: the reason alone, and why a link was refused
        note = " (symlinks in the box are never followed)" if e.errno == errno.ELOOP else ""
        raise OSError(e.errno, os.strerror(e.errno) + note) from None


def open_for_reading(path: str, home: str) -> int:
    """An fd the supervisor can read: a regular file's own, or for one of a FUSE union a copy in a memfd; or a
    directory's, whose entries the supervisor lists through it (and opens, each, through box init again).

    A FUSE mount with allow_other serves only processes of the user namespace
    it was mounted in, so the supervisor, outside it, would get EACCES through
    the file's own fd.  The copy is bounded by the box's tmpfs (--disk).
    """
    fd = _open_beneath(path, home, os.O_RDONLY, directory=True)
    if not _on_fuse(fd):
        return fd
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(f"{path}: a directory of a FUSE union cannot be listed from outside the box")
        return _in_memory(fd)
    finally:
        os.close(fd)


def _on_fuse(fd: int) -> bool:
    """Whether the file open as `fd` is on a FUSE mount (its mount's type, from box init's own mount table)."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        mount_id = next(line.split()[1] for line in f if line.startswith("mnt_id:"))
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[0] == mount_id:
                return fields[fields.index("-") + 1].startswith("fuse")
    return False


def _in_memory(fd: int) -> int:
    st = os.fstat(fd)
    room = os.statvfs("/tmp")  # the tmpfs that --disk sizes
    if st.st_size > room.f_blocks * room.f_frsize:
        raise OSError(errno.EFBIG, f"{st.st_size} bytes, more than the box's --disk")
    mem = os.memfd_create("sbx-read", os.MFD_CLOEXEC)
    try:
        copy(fd, mem, st.st_size)
        os.lseek(mem, 0, os.SEEK_SET)
        os.fchmod(mem, stat.S_IMODE(st.st_mode))
    except BaseException:
        os.close(mem)
        raise
    return mem


def copy(source: int, target: int, size: int) -> int:
    """Copy up to `size` bytes from the start of `source` to `target`'s position; fewer if `source` ends first."""
    copied = 0
    while copied < size:
        n = os.sendfile(target, source, copied, size - copied)
        if n == 0:
            break
        copied += n
    return copied


def write_from(path: str, home: str, source: int, mode: int, uid: int, gid: int) -> None:
    """Create or replace `path` with the contents of the fd `source`, owned by the program's uid.

    Directories missing on the way are made, the program's too.
    """
    fd = _open_beneath(path, home, os.O_WRONLY | os.O_CREAT, mode, (uid, gid))
    try:
        os.ftruncate(fd, 0)
        copy(source, fd, os.fstat(source).st_size)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _DirState:
    path: str
    mode: int
    uid: int
    gid: int
    times_ns: tuple[int, int]


class Resetter:
    """What a run may leave behind, and how to take it away: taken right after the root is built.

    Every writable dir the layout made (/box, /tmp, /dev/shm, each --tmpfs)
    is emptied and gets its mode, owner, times back and its extended
    attributes removed; System V IPC objects are removed, and so are POSIX
    message queues, through an mqueue mount that only box init can reach (it
    is detached from the box's tree as soon as it is opened).  Removal never
    follows a link and never recurses in Python, however deep the program
    made a tree (see teardown).  The box's pid counter goes back to where the
    spawner's start left it (`last_pid`: the box's ns_last_pid), so the next
    run's pids tell nothing of how many processes and threads the last made.
    """

    def __init__(self, dirs: tuple[str, ...], last_pid: int) -> None:
        self._last_pid = last_pid
        self._pids_after = 0
        self._dirs = []
        for path in dirs:
            st = os.lstat(path)
            self._dirs.append(_DirState(path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                        (st.st_atime_ns, st.st_mtime_ns)))
        self._mqueue = _private_mqueue("/tmp")

    def pids_start_after(self, pid: int) -> None:
        """The pid the spawner got: a fresh box's first run gets the pids that follow."""
        self._pids_after = pid

    def reset(self) -> None:
        os.pwrite(self._last_pid, str(self._pids_after).encode(), 0)
        for d in self._dirs:
            fd = os.open(d.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                left = teardown.empty_tree(fd, d.path)
                if left:
                    raise OSError(errno.ENOTEMPTY, f"cannot empty {d.path}: {'; '.join(left)}")
                for name in os.listxattr(fd):
                    os.removexattr(fd, name)
                os.fchown(fd, d.uid, d.gid)
                os.fchmod(fd, d.mode)
                os.utime(fd, ns=d.times_ns)
            finally:
                os.close(fd)
        for name in os.listdir(self._mqueue):
            os.unlink(name, dir_fd=self._mqueue)
        for kind in ("shm", "sem", "msg"):
            with open(f"/proc/sysvipc/{kind}") as f:
                ids = [int(line.split()[1]) for line in f.read().splitlines()[1:]]
            for ident in ids:
                sc.ipc_remove(kind, ident)


def _private_mqueue(over: str) -> int:
    """An fd of the box's mqueue filesystem, mounted over `over` for a moment and detached again at once."""
    sc.mount("mqueue", over, "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    try:
        return os.open(over, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        sc.umount2(over, sc.MNT_DETACH)


def make_symlink(path: str, home: str, target: str, uid: int, gid: int) -> None:
    """A symlink at `path` to `target` (go-judge's copyIn `symlink`), owned by the program's uid.

    The link is made, never followed: what it points to is the program's
    business, and box init and the supervisor never resolve a path through
    the box's links.  An existing name is an error, as go-judge has it.
    """
    parent, name = _parent_beneath(path, home, (uid, gid))
    try:
        os.symlink(target, name, dir_fd=parent)
        os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)
