"""sbx: a rootless Linux sandbox for untrusted code.

The names are loaded on first use: box init, a fresh interpreter, imports
parts of this package and must not pay for the API's (anyio, libseccomp).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import (ExactEnv, Pipe, Program, Sandbox, TeardownWarning, run_connected, run_interactive,
                      run_pipeline)
    from .errors import BoxFileError, ConfigError, ExecError, SandboxError, SetupError
    from .limits import Limits, parse_size
    from .mounts import Bind
    from .output import Relay
    from .pool import SandboxPool
    from .result import Result, Status
    from .tap import Tap

_WHERE = {
    "ExactEnv": "api", "Pipe": "api", "Program": "api", "Relay": "output", "Sandbox": "api", "TeardownWarning": "api",
    "run_connected": "api", "run_interactive": "api", "run_pipeline": "api",
    "BoxFileError": "errors", "ConfigError": "errors", "ExecError": "errors", "SandboxError": "errors",
    "SetupError": "errors", "Limits": "limits", "parse_size": "limits", "Bind": "mounts", "SandboxPool": "pool",
    "Result": "result", "Status": "result", "Tap": "tap",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
