"""Build (once per source version) and locate the spawner, `spawner.c`.

It is compiled on first use into the user's cache rather than at install
time, so an editable or source install works the same; the file name carries
the source hash, so an upgrade never runs a stale binary.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import SetupError

SOURCE = Path(__file__).with_name("spawner.c")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sbx"


def spawner_binary() -> str:
    source = SOURCE.read_bytes()
    target = cache_dir() / f"sbx-spawner-{hashlib.sha256(source).hexdigest()[:16]}"
    if target.is_file():
        return str(target)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SetupError("no C compiler (cc) found: sbx builds its small spawner with it on first use")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".sbx-spawner-")
    os.close(fd)
    try:
        proc = subprocess.run([cc, "-O2", "-static", "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SetupError(f"building the spawner failed: {proc.stderr.strip().splitlines()[-1:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(target)
