"""The result record of a run (a contract: see DESIGN.md)."""

from __future__ import annotations

import json
from enum import Enum

from ..record import Record, asdict, field


class Status(str, Enum):
    OK = "OK"
    RE = "RE"
    SG = "SG"
    TLE = "TLE"
    WLE = "WLE"
    MLE = "MLE"
    OLE = "OLE"
    SV = "SV"
    IE = "IE"


class Result(Record, frozen=False):
    status: Status
    exit_code: int | None
    signal: int | None
    cpu_time: float
    wall_time: float
    memory_peak: int
    syscall: str | None = None
    proc_peak: int | None = None  # the most processes (and threads) at once: the run cgroup's pids.peak
    message: str = ""
    enforcement: dict[str, str] = field(default_factory=dict)
    # the run cgroup's counters of limits hit, e.g. {"memory.oom_kill": 1, "pids.max": 12}
    events: dict[str, int] = field(default_factory=dict)
    stdout: bytes = field(default=b"", repr=False)
    stderr: bytes = field(default=b"", repr=False)

    @classmethod
    def not_run(cls, status: Status, exit_code: int | None, message: str) -> Result:
        """The record of a run whose program never ran (not found, not executable, no box): nothing measured."""
        return cls(status, exit_code, None, 0.0, 0.0, 0, message=message)

    @property
    def summary(self) -> str:
        """`STATUS: message` (`TLE: 1.00 s of CPU time, limit 1 s`), for a person; SV's message already starts so."""
        prefix = f"{self.status.value}: "
        return self.message if self.message.startswith(prefix) else prefix + self.message

    def record(self) -> dict[str, object]:
        """The JSON record: every contract field, never the captured output."""
        d = asdict(self)
        del d["stdout"], d["stderr"]
        d["enforcement"], d["events"] = dict(self.enforcement), dict(self.events)
        d["status"] = self.status.value
        return d

    def to_json(self) -> str:
        return json.dumps(self.record(), sort_keys=True)

    @property
    def shell_status(self) -> int:
        """The exit status a shell expects: the program's own, or 128+N for signal N."""
        if self.status is Status.IE:
            return 125
        if self.signal is not None:
            return 128 + self.signal
        return self.exit_code if self.exit_code is not None else 125
