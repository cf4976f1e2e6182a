"""System calls the standard library lacks (renameat2 flags, unshare-free)."""

import ctypes
import ctypes.util
import os

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_AT_FDCWD = -100
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.renameat2.restype = ctypes.c_int


def rename2(src: bytes, dst: bytes, flags: int) -> None:
    """rename(2) with RENAME_* flags; os.rename cannot express them."""
    if _libc.renameat2(_AT_FDCWD, src, _AT_FDCWD, dst, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)
