"""Compiling sbx's small C parts once per source version into the user's cache.

They are built on first use rather than at install time, so an editable or
source install works the same; the file name carries the source hash, so an
upgrade never runs a stale binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


class BuildError(Exception):
    """The C compiler is missing or refused the source; the message says which."""


def cache_dir() -> Path:
    """sbx's per-user cache (XDG_CACHE_HOME counts only when absolute, as the spec says)."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path(os.path.expanduser("~")) / ".cache"
    return root / "sbx"


def build_cached(source: Path, stem: str, cflags: Sequence[str], what: str) -> str:
    """The path of SOURCE compiled with CFLAGS, building it if this version is not cached yet."""
    code = source.read_bytes()
    key = hashlib.sha256(code + "\0".join(cflags).encode()).hexdigest()[:16]
    target = cache_dir() / f"{stem}-{key}"
    if target.is_file():
        return str(target)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BuildError(f"no C compiler (cc) found: sbx builds its {what} with it on first use")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{stem}-")
    os.close(fd)
    try:
        proc = subprocess.run([cc, *cflags, "-o", tmp, str(source)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"building the {what} failed: {proc.stderr.strip().splitlines()[-1:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(target)
