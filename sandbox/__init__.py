"""sbx: a rootless Linux sandbox for untrusted code."""

from .api import Sandbox
from .errors import ConfigError, ExecError, SandboxError, SetupError
from .limits import Limits, parse_size
from .mounts import Bind
from .result import Result, Status

__all__ = [
    "Bind", "ConfigError", "ExecError", "Limits", "Result", "Sandbox", "SandboxError", "SetupError", "Status",
    "parse_size",
]
