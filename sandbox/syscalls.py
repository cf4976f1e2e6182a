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

# openat2(2) resolve flags.
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


def mount_setattr(path: str, attr_set: int, *, recursive: bool) -> None:
    """Add restrictions to a mount (and its submounts), which `mount -o remount` cannot do for a whole tree."""
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_RECURSIVE if recursive else 0
    _check(
        _libc.syscall(_SYS_MOUNT_SETATTR, -100, _path(path), flags, ctypes.byref(attr), ctypes.sizeof(attr)),
        f"mount_setattr {path}",
        path,
    )


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
