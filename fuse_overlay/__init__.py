"""sbx's union filesystem: read-only lowers merged under a writable upper, over FUSE.

The names are imported on first use: pyfuse3 must not be loaded before the
daemon has put its libfuse shim in place (see libfuse.py).
"""

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "errors", "CorruptUpperError": "errors", "OverlayError": "errors",
    "MountError": "mount", "serve": "mount", "serve_fd": "mount", "serve_path": "mount",
    "UnionFS": "operations", "IdMap": "ownership", "IdRange": "ownership",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
