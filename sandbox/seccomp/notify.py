"""Seccomp user notification from Python: read a blocked call, refuse it, name it.

Policies compile "kill" rules (and calls from a foreign ABI) to
SECCOMP_RET_USER_NOTIF.  The program's process then sleeps in the kernel until
the holder of the listener fd answers.  In a box the spawner (spawner.c) holds
it and reports the call's arch and number, which `syscall_label` names for
the SV record.  This module is the same protocol for a Python holder (the
policy test harness): poll the fd; on POLLIN `receive(fd)` says who called
what, then `answer(fd, n, errno)` fails the call with that errno (never
SECCOMP_USER_NOTIF_FLAG_CONTINUE, so a blocked call never runs), and
`n.syscall` names it (e.g. "mount", "i386:mount", "x32:mount").

If the listener is closed, notified calls fail with ENOSYS; if the caller dies
first (or a signal withdraws the call), `receive` returns None and `answer`
returns False.

Layouts (include/uapi/linux/seccomp.h), fixed by the ioctl numbers, which
encode their sizes:
    struct seccomp_data       { int nr; u32 arch; u64 instruction_pointer; u64 args[6]; }   64 bytes
    struct seccomp_notif      { u64 id; u32 pid; u32 flags; struct seccomp_data data; }   80 bytes
    struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }                  24 bytes
"""

from __future__ import annotations

import errno as _errno
import fcntl
import struct

from ..record import Record

_NOTIF = struct.Struct("=QII iIQ6Q")
_RESP = struct.Struct("=QqiI")
assert _NOTIF.size == 80 and _RESP.size == 24


def _iowr(nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord("!") << 8) | nr


def _iow(nr: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (ord("!") << 8) | nr


SECCOMP_IOCTL_NOTIF_RECV = _iowr(0, _NOTIF.size)  # 0xc0502100
SECCOMP_IOCTL_NOTIF_SEND = _iowr(1, _RESP.size)  # 0xc0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = _iow(2, 8)  # 0x40082102

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

_ARCH_NAMES = {AUDIT_ARCH_X86_64: "x86_64", AUDIT_ARCH_I386: "i386", 0xC00000B7: "aarch64", 0x40000028: "arm"}


class Notification(Record):
    id: int  # the kernel's cookie for this call, needed to answer it
    pid: int  # the caller, as seen from the receiver's pid namespace (0 if not visible there)
    arch: str  # "x86_64", "i386", "x32", or "arch 0x..." for anything else
    nr: int  # the syscall number as the caller passed it (x32 numbers keep bit 30)
    name: str  # the syscall's name in that ABI, or "#NR" if libseccomp does not know the number
    args: tuple[int, ...]  # the six raw argument registers
    instruction_pointer: int

    @property
    def syscall(self) -> str:
        return _label(self.arch, self.name)


def native_arch() -> str:
    import pyseccomp as seccomp

    return _ARCH_NAMES.get(int(seccomp.system_arch()) & 0xFFFFFFFF, "native")


def syscall_name(audit_arch: int, nr: int) -> tuple[str, str]:
    """(ABI name, syscall name) for a raw seccomp_data arch and nr."""
    import pyseccomp as seccomp

    audit_arch &= 0xFFFFFFFF
    if audit_arch == AUDIT_ARCH_X86_64 and nr & X32_SYSCALL_BIT:
        abi, arch = "x32", seccomp.Arch.X32
    elif audit_arch == AUDIT_ARCH_X86_64:
        abi, arch = "x86_64", seccomp.Arch.X86_64
    elif audit_arch == AUDIT_ARCH_I386:
        abi, arch = "i386", seccomp.Arch.X86
    else:
        abi = _ARCH_NAMES.get(audit_arch, f"arch 0x{audit_arch:x}")
        arch = None
    name = None
    if arch is not None:
        try:
            resolved = seccomp.resolve_syscall(arch, nr)
            name = resolved.decode() if isinstance(resolved, bytes) else str(resolved)
        except (ValueError, TypeError, OSError):
            name = None
    return abi, name or f"#{nr}"


def syscall_label(audit_arch: int, nr: int) -> str:
    """The name to report: "mount" for the native ABI, "i386:mount" or "x32:mount" for foreign ones."""
    return _label(*syscall_name(audit_arch, nr))


def _label(abi: str, name: str) -> str:
    return name if abi == native_arch() else f"{abi}:{name}"


def receive(fd: int) -> Notification | None:
    """Read one pending notification (call when the fd polls readable: this blocks otherwise).

    None if the notification was withdrawn before it could be read (the caller died, or a signal interrupted it).
    """
    buf = bytearray(_NOTIF.size)  # the kernel requires it zeroed
    try:
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except InterruptedError:
        return None
    except OSError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    nid, pid, _flags, nr, arch, ip, *args = _NOTIF.unpack(buf)
    abi, name = syscall_name(arch, nr & 0xFFFFFFFF if nr < 0 else nr)
    return Notification(id=nid, pid=pid, arch=abi, nr=nr & 0xFFFFFFFF, name=name, args=tuple(args),
                        instruction_pointer=ip)


def answer(fd: int, notification: Notification, errno: int = _errno.EPERM) -> bool:
    """Make the notified call fail with `errno` (never let it run).  False if the caller is already gone."""
    if errno <= 0:
        raise ValueError("answer() fails the call: errno must be positive")
    return _ioctl_unless_gone(fd, SECCOMP_IOCTL_NOTIF_SEND, bytearray(_RESP.pack(notification.id, 0, -errno, 0)))


def still_pending(fd: int, notification: Notification) -> bool:
    """Whether the call is still waiting for an answer (SECCOMP_IOCTL_NOTIF_ID_VALID)."""
    return _ioctl_unless_gone(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, bytearray(struct.pack("=Q", notification.id)))


def _ioctl_unless_gone(fd: int, request: int, buf: bytearray) -> bool:
    """An ioctl about one notification; False when ENOENT says its caller is gone (killed, or interrupted)."""
    try:
        fcntl.ioctl(fd, request, buf, True)
    except OSError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise
    return True
