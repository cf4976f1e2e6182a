"""sbx: a rootless Linux sandbox for untrusted code."""

from .api import Relay, Sandbox, TeardownWarning, run_interactive
from .errors import BoxFileError, ConfigError, ExecError, SandboxError, SetupError
from .limits import Limits, parse_size
from .mounts import Bind
from .pool import SandboxPool
from .result import Result, Status

__all__ = [
    "Bind", "BoxFileError", "ConfigError", "ExecError", "Limits", "Relay", "Result", "Sandbox", "SandboxError", "SandboxPool", "SetupError",
    "Status", "TeardownWarning", "parse_size", "run_interactive",
]
