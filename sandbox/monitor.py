"""CPU and wall-time enforcement from inside the box, without cgroups.

RLIMIT_CPU is per process and has one-second resolution; isolate and go-judge
poll every 100 ms.  Box init instead sums the CPU clocks of every process of
the run and sleeps until the earliest moment the run *could* reach its limit
if every core were busy, then looks again.  The sleeps shrink geometrically
as the limit nears, so the kill lands within about a millisecond of it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK")
_MIN_SLEEP = 0.0002


def _process_clock(pid: int) -> int:
    """clock_getcpuclockid(pid): the whole-process CPU clock, in nanoseconds for all threads."""
    return ((~pid) << 3) | 2


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
    except OSError:
        return None


def _waited(fields: list[bytes]) -> float:
    """CPU of the children a process has waited for (clock ticks: the kernel keeps no finer sum)."""
    return (int(fields[13]) + int(fields[14])) / _TICK


def _live_cpu(pid: int) -> float:
    """CPU of a live process: its own threads (exact) plus the children it has waited for."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    try:
        own = time.clock_gettime(_process_clock(pid))
    except OSError:
        own = (int(fields[11]) + int(fields[12])) / _TICK
    return own + _waited(fields)


@dataclass
class Monitor:
    """One run's limits, checked against every process but box init and the spawner.

    Processes the spawner has already reaped count through its own waited-for
    total, relative to the start of the run.
    """

    cpu_limit: float | None
    wall_limit: float | None
    spawner: int
    started: float = field(default_factory=time.monotonic)
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))

    def __post_init__(self) -> None:
        fields = _stat(self.spawner) if self.cpu_limit is not None else None
        self.baseline = _waited(fields) if fields else 0.0

    def cpu_used(self) -> float:
        fields = _stat(self.spawner)
        reaped = _waited(fields) - self.baseline if fields else 0.0
        skip = {"1", str(self.spawner)}
        return reaped + sum(_live_cpu(int(n)) for n in os.listdir("/proc") if n.isdigit() and n not in skip)

    def check(self) -> tuple[str | None, float | None]:
        """(limit that was reached or None, seconds until the next look or None for "no limit")."""
        now = time.monotonic()
        waits: list[float] = []
        if self.wall_limit is not None:
            left = self.started + self.wall_limit - now
            if left <= 0:
                return "WLE", None
            waits.append(left)
        if self.cpu_limit is not None:
            left = self.cpu_limit - self.cpu_used()
            if left <= 0:
                return "TLE", None
            waits.append(max(left / self.cores, _MIN_SLEEP))
        return None, min(waits) if waits else None
