"""Checks and preparation done once, before a mount serves anything.

A union over a damaged upper would corrupt it further or fail in confusing
ways later; refusing at mount time with a precise message is kinder.
"""

import os
import stat
from pathlib import Path

from .copyup import WorkDir
from .errors import ConfigError, CorruptUpperError
from .markers import is_chardev_whiteout

WORK_SUBDIR = "sbx-work"


def _directory(path: Path, role: str, error: type[Exception]) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{role} {path}: does not exist") from None
    except OSError as exc:
        raise error(f"{role} {path}: {exc.strerror}") from None
    if is_chardev_whiteout(st):
        raise error(f"{role} {path}: is a whiteout, expected a directory")
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{role} {path}: not a directory")
    return st


def _writable(path: Path, role: str) -> None:
    if not os.access(path, os.W_OK | os.X_OK):
        raise CorruptUpperError(f"{role} {path}: not writable by uid {os.geteuid()}")


def prepare_layers(lowers: list[Path], upper: Path | None,
                   work: Path | None) -> tuple[list[bytes], bytes | None, WorkDir | None]:
    if not lowers:
        raise ConfigError("no lower layer given")
    for lower in lowers:
        _directory(lower, "lower layer", ConfigError)
        if not os.access(lower, os.R_OK | os.X_OK):
            raise ConfigError(f"lower layer {lower}: not readable by uid {os.geteuid()}")
    lower_b = [os.fsencode(os.path.abspath(p)) for p in lowers]
    if upper is None:
        if work is not None:
            raise ConfigError("a work directory was given without an upper directory")
        return lower_b, None, None
    if work is None:
        raise ConfigError("an upper directory needs a work directory")
    ust = _directory(upper, "upper directory", CorruptUpperError)
    _writable(upper, "upper directory")
    wst = _directory(work, "work directory", CorruptUpperError)
    _writable(work, "work directory")
    if ust.st_dev != wst.st_dev:
        raise ConfigError(f"work directory {work} and upper directory {upper} are on different filesystems")
    upper_abs, work_abs = os.path.realpath(upper), os.path.realpath(work)
    if upper_abs == work_abs or work_abs.startswith(upper_abs + "/") or upper_abs.startswith(work_abs + "/"):
        raise ConfigError(f"work directory {work} and upper directory {upper} must not contain each other")
    private = os.path.join(work_abs, WORK_SUBDIR)
    try:
        os.mkdir(private, 0o700)
    except FileExistsError:
        _directory(Path(private), "work directory", CorruptUpperError)
    workdir = WorkDir(os.fsencode(private))
    try:
        workdir.purge()
    except OSError as exc:
        raise CorruptUpperError(f"work directory {private}: cannot clean it: {exc.strerror}") from None
    return lower_b, os.fsencode(upper_abs), workdir
