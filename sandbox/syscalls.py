"""The one place where raw Linux syscalls are called.

Python 3.11 has no `os.unshare`, no `mount`, no `openat2` and no seccomp
loader, so these go through libc with ctypes.  (The box itself is built by
the starter, in C: starter.c.)  Every helper checks the return
value and raises `OSError` with the errno and the call's name, so a failure
deep in box setup still produces a precise message.

ctypes is loaded on the first call, not on import: a plain `sbx run` makes
none of these calls, and the import costs a start some 1.5 ms.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000

AT_EMPTY_PATH = 0x1000

# prctl(2).
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

# seccomp(2).
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3

_SYS_SECCOMP = 317
_SYS_OPENAT2 = 437
_SYS_FCHMODAT2 = 452

# openat2(2) resolve flags.
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08


def _check(result: int, what: str, *paths: str) -> int:
    if result < 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", *paths[:1])
    return result


def _path(p: str | None) -> bytes | None:
    return None if p is None else os.fsencode(p)


def unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    import ctypes

    _check(
        _libc().mount(_path(source), _path(target), _path(fstype), ctypes.c_ulong(flags), _path(data)),
        f"mount {fstype or 'bind'} on {target}",
        target,
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc().umount2(_path(target), flags), f"umount {target}", target)


def fchmod_path(fd: int, mode: int) -> None:
    """chmod the inode open as `fd`, also an O_PATH fd (which fchmod refuses): fchmodat2(fd, "", AT_EMPTY_PATH)
    (Linux 6.6), else through /proc/self/fd/N, which names that very inode."""
    import ctypes

    if _libc().syscall(_SYS_FCHMODAT2, fd, b"", mode, AT_EMPTY_PATH) == 0:
        return
    if ctypes.get_errno() not in (38, 22):  # ENOSYS, EINVAL (no AT_EMPTY_PATH there): the older way
        _check(-1, "chmod")
    os.chmod(f"/proc/self/fd/{fd}", mode)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    import ctypes

    return _check(
        _libc().prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)),
        f"prctl({option})",
    )


def seccomp_set_filter(bpf: bytes, flags: int = 0) -> int:
    """Load a BPF program (a sequence of 8-byte sock_filter instructions).

    Returns the listener fd when `SECCOMP_FILTER_FLAG_NEW_LISTENER` is given.
    """
    import ctypes

    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = struct.pack("=H6xQ", len(bpf) // 8, ctypes.addressof(buf))
    return _check(_libc().syscall(_SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, prog), "seccomp")


def openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """open() whose path resolution the kernel confines (no symlinks, nothing outside `dirfd`)."""
    how = struct.pack("=QQQ", flags, mode, resolve)
    return _check(_libc().syscall(_SYS_OPENAT2, dirfd, _path(path), how, len(how)), f"open {path}", path)


PROC_SUPER_MAGIC = 0x9FA0


def fs_type(fd: int) -> int:
    """The filesystem's magic number (statfs's f_type, the struct's first word) of what `fd` is open on."""
    import ctypes

    buf = ctypes.create_string_buffer(120)  # struct statfs is 120 bytes on 64-bit Linux
    _check(_libc().fstatfs(fd, buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value
