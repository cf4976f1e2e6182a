"""The one place where raw Linux syscalls are called.

Python 3.11 has no `os.unshare`, no `mount`, no `pivot_root` and no seccomp
loader, so these go through libc with ctypes.  Every helper checks the return
value and raises `OSError` with the errno and the call's name, so a failure
deep in box setup still produces a precise message.
"""

from __future__ import annotations

import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

# mount_setattr(2).
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100

# The fd-based mount API (open_tree, move_mount, fsopen, fsconfig, fsmount).
OPEN_TREE_CLONE = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6

# prctl(2).
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# seccomp(2).
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3

_SYS_PIVOT_ROOT = 155
_SYS_CAPSET = 126
_SYS_SECCOMP = 317
_SYS_MOUNT_SETATTR = 442
_SYS_OPENAT2 = 437
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_FCHMODAT2 = 452

# openat2(2) resolve flags.
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _check(result: int, what: str, *paths: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", *paths[:1])
    return result


def _path(p: str | None) -> bytes | None:
    return None if p is None else os.fsencode(p)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(_path(source), _path(target), _path(fstype), ctypes.c_ulong(flags), _path(data)),
        f"mount {fstype or 'bind'} on {target}",
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_path(target), flags), f"umount {target}", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _path(new_root), _path(put_old)), "pivot_root", new_root)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str | int, attr_set: int, *, recursive: bool) -> None:
    """Add restrictions to a mount (and its submounts), which `mount -o remount` cannot do for a whole tree.

    `path` may be an fd: the mount it is open on (attached or not, e.g. from `open_tree` or `fsmount`).
    """
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    if isinstance(path, int):
        dirfd, name, flags = path, b"", flags | AT_EMPTY_PATH
    else:
        dirfd, name = -100, _path(path)
    _check(
        _libc.syscall(_SYS_MOUNT_SETATTR, dirfd, name, flags, ctypes.byref(attr), ctypes.sizeof(attr)),
        f"mount_setattr {path}",
        str(path),
    )


def open_tree(dirfd: int, path: str, what: str) -> int:
    """A detached copy of the mount tree at `path` (relative to `dirfd`), for `move_mount`; never through a
    trailing symlink; "" is `dirfd` itself.  `what` names it in an error."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE | AT_SYMLINK_NOFOLLOW | (AT_EMPTY_PATH if path == "" else 0)
    return _check(_libc.syscall(_SYS_OPEN_TREE, dirfd, _path(path), flags), f"bind {what}", what)


def move_mount(mount_fd: int, target_fd: int, what: str) -> None:
    """Attach the detached mount `mount_fd` exactly on the file or directory open as `target_fd` (an fd, no path)."""
    _check(_libc.syscall(_SYS_MOVE_MOUNT, mount_fd, b"", target_fd, b"",
                         MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH), f"mount on {what}", what)


def fs_mount(fstype: str, options: dict[str, str | None], attrs: int) -> int:
    """A new, detached instance of `fstype` (fsopen, fsconfig, fsmount) with mount attributes `attrs`.

    Options with a None value are flags. Returns an fd of its root, for `move_mount` and as a dirfd.
    """
    fs = _check(_libc.syscall(_SYS_FSOPEN, _path(fstype), 1), f"fsopen {fstype}")  # FSOPEN_CLOEXEC
    try:
        for key, value in options.items():
            cmd = _FSCONFIG_SET_FLAG if value is None else _FSCONFIG_SET_STRING
            _check(_libc.syscall(_SYS_FSCONFIG, fs, cmd, _path(key), _path(value), 0), f"{fstype} option {key}")
        _check(_libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0), f"mount {fstype}")
        return _check(_libc.syscall(_SYS_FSMOUNT, fs, 1, ctypes.c_uint(attrs)), f"fsmount {fstype}")  # FSMOUNT_CLOEXEC
    finally:
        os.close(fs)


def fchmod_path(fd: int, mode: int) -> None:
    """chmod the inode open as `fd`, also an O_PATH fd (which fchmod refuses): fchmodat2(fd, "", AT_EMPTY_PATH)
    (Linux 6.6), else through /proc/self/fd/N, which names that very inode."""
    if _libc.syscall(_SYS_FCHMODAT2, fd, b"", mode, AT_EMPTY_PATH) == 0:
        return
    if ctypes.get_errno() not in (38, 22):  # ENOSYS, EINVAL (no AT_EMPTY_PATH there): the older way
        _check(-1, "chmod")
    os.chmod(f"/proc/self/fd/{fd}", mode)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        f"prctl({option})",
    )


def drop_bounding_set() -> None:
    """Empty the bounding set (needs CAP_SETPCAP, so before giving up root).

    Without this a program that is, or becomes, uid 0 inside the namespace
    would regain every capability at its next execve.
    """
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        prctl(PR_CAPBSET_DROP, cap)


def clear_capabilities() -> None:
    """Empty the ambient, effective, permitted and inheritable sets."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = struct.pack("=Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    _check(_libc.syscall(_SYS_CAPSET, header, bytes(24)), "capset")


def seccomp_set_filter(bpf: bytes, flags: int = 0) -> int:
    """Load a BPF program (a sequence of 8-byte sock_filter instructions).

    Returns the listener fd when `SECCOMP_FILTER_FLAG_NEW_LISTENER` is given.
    """
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = struct.pack("=H6xQ", len(bpf) // 8, ctypes.addressof(buf))
    return _check(_libc.syscall(_SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, prog), "seccomp")


def openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """open() whose path resolution the kernel confines (no symlinks, nothing outside `dirfd`)."""
    how = struct.pack("=QQQ", flags, mode, resolve)
    return _check(_libc.syscall(_SYS_OPENAT2, dirfd, _path(path), how, len(how)), f"open {path}", path)


_IPC_RMID = 0


def ipc_remove(kind: str, ident: int) -> None:
    """Remove one System V IPC object ("shm", "sem" or "msg") of the caller's IPC namespace."""
    calls = {"shm": lambda: _libc.shmctl(ident, _IPC_RMID, None), "sem": lambda: _libc.semctl(ident, 0, _IPC_RMID),
             "msg": lambda: _libc.msgctl(ident, _IPC_RMID, None)}
    _check(calls[kind](), f"{kind}ctl IPC_RMID {ident}")


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    _check(_libc.close_range(ctypes.c_uint(first), ctypes.c_uint(last), 0), "close_range")


PROC_SUPER_MAGIC = 0x9FA0


def fs_type(fd: int) -> int:
    """The filesystem's magic number (statfs's f_type, the struct's first word) of what `fd` is open on."""
    buf = ctypes.create_string_buffer(120)  # struct statfs is 120 bytes on 64-bit Linux
    _check(_libc.fstatfs(fd, buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value
