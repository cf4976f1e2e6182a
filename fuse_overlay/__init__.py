"""sbx's union filesystem: read-only lowers merged under a writable upper, over FUSE."""

from .errors import ConfigError, CorruptUpperError, OverlayError
from .mount import MountError, serve, serve_fd, serve_path
from .operations import UnionFS
from .ownership import IdMap, IdRange

__all__ = [
    "ConfigError", "CorruptUpperError", "IdMap", "IdRange", "MountError", "OverlayError",
    "UnionFS", "serve", "serve_fd", "serve_path",
]
