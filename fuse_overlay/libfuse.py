"""pyfuse3, loaded after the noopen shim (noopen.c) so that its libfuse session goes through it.

Every module here imports pyfuse3 from this one.  The shim is built on first
use like the spawner; where it cannot be built or loaded (no compiler or no
libfuse3 headers), or pyfuse3 was loaded before this module, the daemon
still works, with open and opendir requests (see `noopen_active`).
"""

import ctypes
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .cbuild import BuildError, build_cached

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("noopen.c")


def _cflags() -> list[str]:
    include = ["-I/usr/include/fuse3"]
    if shutil.which("pkg-config"):
        proc = subprocess.run(["pkg-config", "--cflags", "fuse3"], capture_output=True, text=True)
        if proc.returncode == 0:
            include = proc.stdout.split()
    return ["-O2", "-shared", "-fPIC", *include, "-ldl"]


def _load() -> ctypes.CDLL | None:
    if "pyfuse3" in sys.modules:
        log.warning("pyfuse3 was loaded before fuse_overlay: serving with open requests")
        return None
    try:
        path = build_cached(SOURCE, "sbx-noopen", _cflags(), "libfuse shim")
        return ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    except (BuildError, OSError) as exc:
        log.warning("serving with open requests: %s", exc)
        return None


_shim = _load()

import pyfuse3  # must come after the shim
from pyfuse3 import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
)


def noopen_active() -> bool:
    """Whether this session negotiated through the shim; true from the init request on."""
    return _shim is not None and ctypes.c_int.in_dll(_shim, "sbx_noopen_active").value == 1


__all__ = [
    "EntryAttributes", "FUSEError", "FileInfo", "ReaddirToken", "RequestContext", "SetattrFields",
    "StatvfsData", "noopen_active", "pyfuse3",
]
