"""What the wheel ships inside the package: the starter and the spawner, built by setup.py, and the shipped policies.

They are found next to the installed code, never in a cache or on PATH, so
nothing at run time compiles, and nothing writable by someone else decides
what runs as the spawner.  A source tree that was never built has neither:
that is said in one line rather than as an empty policy list.
"""

from __future__ import annotations

import os

from .errors import SetupError

# An installed wheel is unpacked on disk, so the package's files are real paths next to this one.  Plain strings:
# importlib.resources (zipfile) and pathlib would cost every start some 5 ms for nothing.
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
SPAWNER = os.path.join(_PACKAGE, "_bin", "sbx-spawner")
STARTER = os.path.join(_PACKAGE, "_bin", "sbx-starter")
POLICY_DIR = os.path.join(_PACKAGE, "policies")


def shipped(path: str, what: str) -> str:
    """PATH, or a SetupError saying that sbx was not installed from its wheel."""
    if not os.path.exists(path):
        raise SetupError(f"{what}: not found at {path}; install sbx with pip (pip install . builds it), "
                         f"rather than running it from a source tree")
    return path


def problems() -> list[str]:
    """What is missing from this installation (for `sbx check`)."""
    out = []
    for path, what in ((STARTER, "the starter"), (SPAWNER, "the spawner"), (POLICY_DIR, "the shipped policies")):
        try:
            shipped(path, what)
        except SetupError as e:
            out.append(str(e))
    return out
