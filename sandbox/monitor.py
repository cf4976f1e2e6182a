"""CPU and wall-time enforcement from inside the box, without cgroups.

RLIMIT_CPU is per process and has one-second resolution; isolate and go-judge
poll every 100 ms.  Box init instead sums the CPU clocks of every process in
the box and sleeps until the earliest moment the run *could* reach its limit
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


def _live_cpu(pid: int) -> float:
    """CPU of a live process: its own threads (exact) plus the children it has waited for (ticks)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
    except OSError:
        return 0.0
    waited = (int(fields[13]) + int(fields[14])) / _TICK
    try:
        return time.clock_gettime(_process_clock(pid)) + waited
    except OSError:
        return (int(fields[11]) + int(fields[12])) / _TICK + waited


@dataclass
class Monitor:
    cpu_limit: float | None
    wall_limit: float | None
    started: float = field(default_factory=time.monotonic)
    reaped_cpu: float = 0.0
    overhead: float = 0.0
    peak_rss: int = 0
    main_pid: int = 0
    main_status: int | None = None
    """The program's wait status, as the stub reported it."""
    stub_status: int | None = None
    """The stub's own, used only when it died without reporting (it was killed)."""
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))

    def reaped(self, utime: float, stime: float, maxrss_kib: int) -> None:
        """Account for a process box init has waited for (with all the children it waited for)."""
        self.reaped_cpu += utime + stime
        self.peak_rss = max(self.peak_rss, maxrss_kib * 1024)

    def cpu_used(self) -> float:
        live = sum(_live_cpu(int(name)) for name in os.listdir("/proc") if name.isdigit() and name != "1")
        return self.reaped_cpu + live - self.overhead

    @property
    def cpu_time(self) -> float:
        """The run's CPU time once every process is reaped: all of it but the sandbox's own setup."""
        return max(self.reaped_cpu - self.overhead, 0.0)

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
