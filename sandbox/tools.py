"""The host's helper programs sbx runs (newuidmap, newgidmap, busctl), found on PATH.

Not `shutil.which`: shutil's import brings bz2 and lzma, some 2 ms of every
start, for this one lookup.
"""

from __future__ import annotations

import os


def find(name: str) -> str | None:
    """The first executable `name` on PATH (as a shell would run it), or None."""
    for directory in os.get_exec_path():
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None
