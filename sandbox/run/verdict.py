"""From what box init measured to a `Result`: the order in which causes win.

A limit the sandbox enforced wins over what it caused (a TLE kill shows as
SIGKILL, an output cap as SIGPIPE), and a run that used more CPU than allowed
is TLE even if it managed to exit first, as in every judge.
"""

from __future__ import annotations

import os
import signal as signals

from ..box.run_protocol import RunEnd
from .limits import Limits
from .result import Result, Status


def _signame(sig: int) -> str:
    try:
        return signals.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _size(n: int | None) -> str:
    """Bytes as a person reads a limit: 256 MiB, 1.5 GiB, 100 bytes."""
    if n is None:
        return "none"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} bytes"


def verdict(end: RunEnd, limits: Limits, *, output_exceeded: bool, enforcement: dict[str, str]) -> Result:
    wstatus = end.wait_status
    exit_code = sig = None
    if wstatus is not None:
        code = os.waitstatus_to_exitcode(wstatus)
        exit_code, sig = (code, None) if code >= 0 else (None, -code)
    cpu, wall, peak = end.cpu_time, end.wall_time, end.memory_peak
    killed = end.killed
    events = end.events

    def result(status: Status, message: str) -> Result:
        if "pids.max" in events:
            message += f" (the pids limit of {limits.pids} refused {events['pids.max']} forks)"
        refused = [(name.removeprefix("refused."), n) for name, n in events.items() if name.startswith("refused.")]
        if refused and status is not Status.OK:  # the likely cause when a policy breaks a program
            message += " (the policy refused " + ", ".join(f"{name} x{n}" for name, n in refused) + ")"
        return Result(status, exit_code, sig, cpu, wall, peak, message=message, enforcement=enforcement,
                      events=events, proc_peak=end.proc_peak)

    if killed == "SV":
        name = end.syscall or "unknown"
        r = result(Status.SV, f"SV: {name}")
        r.syscall = name
        return r
    if output_exceeded or killed == "OLE":
        return result(Status.OLE, f"output reached the limit of {_size(limits.output)} (stdout and stderr together)")
    # (not SIGXCPU itself: the program can raise it; the RLIMIT_CPU backstop sends it only past the limit)
    if limits.cpu_time is not None and (killed == "TLE" or cpu > limits.cpu_time):
        return result(Status.TLE, f"{cpu:.2f} s of CPU time, limit {limits.cpu_time:g} s")
    if killed == "WLE":
        return result(Status.WLE, f"{wall:.2f} s of wall time, limit {limits.wall_time:g} s")
    if killed == "MLE":
        return result(Status.MLE, f"{_size(peak)} of memory at peak, limit {_size(limits.memory)} (sampled)")
    if killed is not None:
        return result(Status.IE, f"run stopped: {killed}")
    if sig == signals.SIGXFSZ and limits.file_size is not None:
        # the kernel's or the program's own: nothing tells them apart, so it is the signal, not OLE
        return result(Status.SG, f"killed by SIGXFSZ (a file may have reached the size limit of "
                                 f"{_size(limits.file_size)})")
    if events.get("memory.oom_kill"):
        return result(Status.MLE, f"{_size(peak)} of memory at peak, limit {_size(limits.memory)} (OOM-killed)")
    if sig is not None:
        return result(Status.SG, f"killed by {_signame(sig)}")
    if exit_code:
        return result(Status.RE, f"exited with status {exit_code}")
    return result(Status.OK, "exited normally")


def enforcement(limits: Limits, policy: str | None, cgroup: bool, traced: bool) -> dict[str, str]:
    """Which mechanism enforces each limit that is set (never claim one that is not); `traced`: see fallback.py."""
    mechanisms = {
        "cpu_time": "cgroup" if cgroup else "ptrace" if traced else "monitor",
        "wall_time": "monitor", "memory": "cgroup" if cgroup else "sampled",
        "pids": "cgroup" if cgroup else "rlimit", "output": "supervisor", "file_size": "rlimit", "cpus": "cgroup",
    }
    enforced = {name: how for name, how in mechanisms.items() if getattr(limits, name) is not None}
    if policy is not None:
        enforced["syscalls"] = f"seccomp:{policy}"
    return enforced
