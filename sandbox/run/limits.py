"""Resource limits of a run, and the parsing of their command-line spellings."""

from __future__ import annotations

import math
import os
import re

from ..errors import ConfigError
from ..record import Record

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str, what: str = "size") -> int:
    """`256M`, `1G`, `65536`, `1.5GiB` -> bytes; binary units as isolate and go-judge use them."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ConfigError(f"{what}: invalid size {text!r} (expected e.g. 65536, 256M, 1G)")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < 1:
        raise ConfigError(f"{what}: size {text!r} must be at least one byte")
    return int(value)


def _positive(text: str, what: str, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what}: invalid number of {unit} {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what}: {text!r} must be a positive number of {unit}")
    return value


def parse_seconds(text: str, what: str = "time") -> float:
    return _positive(text, what, "seconds")


def parse_cpus(text: str) -> float:
    return _positive(text, "--cpus", "CPUs")


def parse_count(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{what}: invalid count {text!r}") from None
    if value < 1:
        raise ConfigError(f"{what}: {text!r} must be at least 1")
    return value


class Limits(Record):
    """Per-run limits; None means "not limited".

    The defaults are what a sandbox for untrusted code should never run without:
    a bounded life (ten minutes of wall time, as nsjail), memory and processes
    against exhaustion and fork bombs, bounded captured output, bounded file
    size and open files, and no core dumps (always).  CPU time needs no default:
    the wall time bounds it.
    """

    cpu_time: float | None = None
    wall_time: float | None = 600.0
    memory: int | None = 2**30
    pids: int | None = 64
    output: int | None = 64 * 2**20
    file_size: int | None = 1 * 2**30
    open_files: int = 256
    stack: int | None = None
    cpus: float | None = None  # cpu.max: how many cores' worth of time per period (cgroup only)
    address_space: int | None = None
    """RLIMIT_AS of each process (go-judge's addressSpaceLimit): an allocation past it fails, where `memory`
    kills the run.  Without a cgroup the lower of this and the memory backstop applies."""
    data: int | None = None
    """RLIMIT_DATA of each process (go-judge's dataSegmentLimit and strictMemoryLimit)."""
    cpu_set: frozenset[int] | None = None
    """The CPUs the run's processes may run on (sched_setaffinity before execve; go-judge's cpuSetLimit).  A
    program may widen it again within what the box has: it is placement, not a limit the program cannot lift."""

    def __post_init__(self) -> None:
        for name in ("cpu_time", "wall_time", "cpus"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v <= 0):
                raise ConfigError(f"{name}: must be a positive number, not {v!r}")
        if self.cpu_set is not None and (not self.cpu_set or not self.cpu_set <= os.sched_getaffinity(0)):
            raise ConfigError(f"cpu_set: {sorted(self.cpu_set)} is not a set of this machine's CPUs "
                              f"({sorted(os.sched_getaffinity(0))})")
        for name in ("memory", "pids", "output", "file_size", "open_files", "stack", "address_space", "data"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name}: must be a positive integer, not {v!r}")
