"""pyfuse3, loaded after the libfuse shim (shim.c) so that its session goes through it.

Every module here imports pyfuse3 from this one.  The shim is compiled when
the wheel is built (setup.py) and ships inside this package; where it cannot
be loaded, or pyfuse3 was loaded before this module, the daemon still works,
with open and opendir requests (see `noopen_active`) and every request
answered in Python.
"""

import ctypes
import logging
import os
import struct
import sys

log = logging.getLogger(__name__)

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "sbx-fuse-shim.so")  # (the wheel is unpacked)


def _load() -> ctypes.CDLL | None:
    if "pyfuse3" in sys.modules:
        log.warning("pyfuse3 was loaded before fuse_overlay: serving with open requests")
        return None
    try:
        return ctypes.CDLL(SHIM, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    except OSError as exc:
        log.warning("serving with open requests: the libfuse shim cannot be loaded: %s", exc)
        return None


_shim = _load()

import pyfuse3  # must come after the shim
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, ReaddirToken, RequestContext, SetattrFields, StatvfsData


def noopen_active() -> bool:
    """Whether this session negotiated through the shim; true from the init request on."""
    return _shim is not None and ctypes.c_int.in_dll(_shim, "sbx_noopen_active").value == 1


_ATTR = struct.Struct("=QQQQqqqIIIIIIiI")
"""shim.c's struct sbx_attr_rec."""


class FastPath:
    """The tables from which the shim answers getattr, read and a listing's end without Python.

    Only what can no longer change goes in: attributes of objects not in the
    upper, read-only descriptors and paths of lower files, and where a
    directory's listing ends while it stays the same.  An entry must be
    withdrawn before the object changes (copy-up, a name added or removed)
    or the descriptor is closed; all of it runs in the daemon's one thread.
    Attributes are sent in batches (`flush`): before any other change to the
    tables, so that they apply in order, and before a request is answered
    (operations.py's `handler`), so that the kernel cannot ask about an
    object the shim has yet to hear of.
    """

    def __init__(self, lib: ctypes.CDLL | None) -> None:
        self._lib = lib
        self._records: list[bytes] = []
        self._paths: list[bytes] = []
        self._paths_size = 0
        if lib is not None:
            lib.sbx_fast_attrs.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
            lib.sbx_fast_file.argtypes = [ctypes.c_uint64, ctypes.c_int]
            lib.sbx_fast_listed.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
            lib.sbx_fast_forget.argtypes = [ctypes.c_uint64]

    def attr(self, ino: int, e: EntryAttributes, valid: float, path: bytes | None) -> None:
        """PATH: a lower regular file's, which the shim opens itself on a read Python has not opened it for."""
        if self._lib is None:
            return
        offset = -1
        if path is not None:
            offset = self._paths_size
            self._paths.append(path + b"\0")
            self._paths_size += len(path) + 1
        self._records.append(_ATTR.pack(ino, e.st_size, e.st_blocks, int(valid), e.st_atime_ns, e.st_mtime_ns,
                                        e.st_ctime_ns, e.st_mode, e.st_nlink, e.st_uid, e.st_gid, e.st_rdev,
                                        e.st_blksize, offset, 0))

    def flush(self) -> None:
        """Send the attributes `attr` collected."""
        if self._records:
            assert self._lib is not None
            self._lib.sbx_fast_attrs(b"".join(self._records), len(self._records), b"".join(self._paths))
            self._records.clear()
            self._paths.clear()
            self._paths_size = 0

    def file(self, ino: int, fd: int) -> None:
        if self._lib is not None:
            self.flush()
            self._lib.sbx_fast_file(ino, fd)

    def listed(self, ino: int, last_cookie: int) -> None:
        """The directory was listed to its end, LAST_COOKIE its last entry's: a readdir from there is empty."""
        if self._lib is not None:
            self.flush()
            self._lib.sbx_fast_listed(ino, last_cookie)

    def unlisted(self, ino: int) -> None:
        """The directory's listing changed."""
        self.listed(ino, 0)

    def forget(self, ino: int) -> None:
        if self._lib is not None:
            self.flush()
            self._lib.sbx_fast_forget(ino)

    def counts(self) -> tuple[int, int, int]:
        """Requests the shim answered by itself, of them readdirs past a listing's end, and lower files it opened."""
        lib = self._lib
        if lib is None:
            return 0, 0, 0

        def count(name: str) -> int:
            return ctypes.c_ulong.in_dll(lib, f"sbx_fast_{name}").value

        return count("answered"), count("listing_ends"), count("opened")


fast = FastPath(_shim)


__all__ = [
    "EntryAttributes", "FUSEError", "FileInfo", "ReaddirToken", "RequestContext", "SetattrFields",
    "StatvfsData", "fast", "noopen_active", "pyfuse3",
]
