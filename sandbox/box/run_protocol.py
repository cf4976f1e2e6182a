"""A run as the spawner takes it and reports it (spawner.c), typed: one request, one report, one end of a run.

The request goes as NUL-separated tokens, which C splits without a parser,
with the program's fds (then the filter's and the run cgroup's) alongside;
the report comes back as JSON.  `RunRequest.tokens` and `decode_report` are
the only places that know either format, and tests/test_units.py checks the
bounds below against spawner.c's own.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

from ..record import Record, field
from ..seccomp.notify import syscall_label

MAX_ARGS = 4096
"""Per run, for argv and for the environment each."""
MAX_PROGRAM_FDS = 64
"""The fds a program may be given: 0 to 63."""
HEAD_TOKENS = 16
"""The tokens of a request before its rlimits, argv and environment."""
_SAY_STARTED, _TERMINAL = 1, 2
"""The request's FLAGS (spawner.c)."""


class Seccomp(enum.IntEnum):
    """How the program's process loads the filter it is given."""

    NONE = 0
    AS_IS = 1
    COUNTED = 2  # each errno the policy returns is a notification the spawner answers and counts


class RunRequest(Record):
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    rlimits: Sequence[tuple[int, int, int]]  # (resource, soft, hard)
    cpu_time: float | None
    wall_time: float | None
    memory: int | None  # sampled by the spawner: only without a run cgroup
    output: int | None  # captured stdout and stderr together
    cpu_set: frozenset[int] | None
    trace: bool  # ptrace every process (CPU time without a cgroup; fallback.py)
    seccomp: Seccomp
    capture: bool  # stdout and stderr are the supervisor's files, filled by the spawner
    fds: int  # the program's fds sent with the request: 0 to fds - 1
    say_started: bool = False  # the spawner says {"started": true} once the program's execve succeeded
    terminal: bool = False  # stdin is a terminal made for this run alone: the program's controlling terminal

    def tokens(self, cgroup: bool) -> list[str]:
        """The request's tokens; `cgroup`: the run cgroup's procs and cpu.stat fds follow the others."""
        env = [f"{k}={v}" for k, v in self.env.items()]
        return ["run", str(int(self.seccomp)), _flag(cgroup), _flag(self.trace),
                str(self.cpu_time or 0), str(self.wall_time or 0), str(self.memory or 0),
                _flag(self.capture), str(self.output or 0),
                str(len(self.rlimits)), str(len(self.argv)), str(len(env)), self.cwd,
                ",".join(str(cpu) for cpu in sorted(self.cpu_set or ())), str(self.fds),
                str((_SAY_STARTED if self.say_started else 0) | (_TERMINAL if self.terminal else 0)),
                *(str(v) for triple in self.rlimits for v in triple), *self.argv, *env]


def _flag(value: bool) -> str:
    return "1" if value else "0"


class StartFailure(Record):
    """The program never ran: the step that failed (setup, cwd, cgroup, trace, seccomp, exec) and its errno."""

    stage: str
    errno: int


class RunEnd(Record):
    """How a run ended, as `verdict` reads it: the spawner's report, what the supervisor stopped it for, and the
    run cgroup's accounting when there is one."""

    wait_status: int | None
    cpu_time: float
    wall_time: float
    memory_peak: int
    killed: str | None = None  # the limit that ended it (TLE, WLE, MLE, SV, OLE), or why it was stopped
    syscall: str | None = None  # the first call the policy refused with a kill
    events: dict[str, int] = field(default_factory=dict)
    proc_peak: int | None = None
    out: tuple[int, int] = (0, 0)  # bytes the spawner captured into the stdout and stderr files


def decode_report(report: dict[str, Any], killed: str | None) -> RunEnd | StartFailure:
    """The spawner's JSON; `killed`: why the supervisor stopped the run, if it did (the spawner's own limit wins)."""
    if "stage" in report:
        return StartFailure(str(report["stage"]), int(report["errno"]))
    syscall = report["syscall"]
    return RunEnd(
        wait_status=report["wait_status"] if report["wait_status"] >= 0 else None,
        cpu_time=report["cpu"], wall_time=report["wall"], memory_peak=report["maxrss"] * 1024,
        killed=report["limit"] or killed,
        syscall=syscall_label(syscall[0], syscall[1] & 0xFFFFFFFF) if syscall else None,
        events={f"refused.{syscall_label(arch, nr & 0xFFFFFFFF)}": count
                for arch, nr, count in report.get("refused", [])},
        out=(report["out"][0], report["out"][1]),
    )
