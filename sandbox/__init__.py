"""sbx: a rootless Linux sandbox for untrusted code.

The names are loaded on first use, so that a command that needs no box (`sbx image ls`,
`sbx policy show`) does not pay for the API's imports (anyio, the event loop).

The house, by mechanism: `box/` (a box's plan and layout, the C starter that builds it and
is its init, the C spawner, ids, cgroups, the supervisor's side), `run/` (a run's limits,
input and output, verdict and record), `seccomp/`, `images/`, `judge/`, `service/`, `cli/`;
`api.py` is the Sandbox, `pool.py` the pool, `volumes.py` the named volumes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Pipe, Program, Sandbox, TeardownWarning, run_connected, run_interactive, run_pipeline
    from .box.layout import Bind, VolumeMount
    from .errors import BoxFileError, ConfigError, ExecError, SandboxError, SetupError
    from .pool import SandboxPool
    from .run.limits import Limits, parse_size
    from .run.relay import Relay
    from .run.result import Result, Status
    from .run.tap import Tap
    from .spec import ExactEnv
    from .volumes import Volumes

_WHERE = {
    "ExactEnv": "spec", "Pipe": "api", "Program": "api", "Relay": "run.relay", "Sandbox": "api",
    "TeardownWarning": "api", "run_connected": "api", "run_interactive": "api", "run_pipeline": "api",
    "BoxFileError": "errors", "ConfigError": "errors", "ExecError": "errors", "SandboxError": "errors",
    "SetupError": "errors", "Limits": "run.limits", "parse_size": "run.limits", "Bind": "box.layout",
    "VolumeMount": "box.layout", "Volumes": "volumes",
    "SandboxPool": "pool", "Result": "run.result", "Status": "run.result", "Tap": "run.tap",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
