"""How CPU and memory limits hold for the whole run where no cgroup v2 is delegated.

A cgroup sees every process and every page of a run.  Without one:

- CPU: the spawner sums the CPU clocks of the run's processes.  A child that
  the kernel reaps by itself (its parent ignores SIGCHLD) would take its time
  with it, so a run that may fork is traced (spawner.c), and every process is
  counted at its death.  A run that can only be one process (pids 1, or a
  policy such as `strict` that makes threads but no process) needs none.
- Memory: the spawner samples the run's resident memory and ends it MLE at the
  limit.  Each process also gets an address-space rlimit, as a backstop well
  above the limit: at the limit itself, a failed allocation would end the run
  as the program's own error before sbx saw the limit reached; and runtimes
  reserve address space they never touch: the Go runtime some 700 MiB up
  front, a JVM its heap and code areas, V8 (Node.js) more than a GiB for each
  isolate, so each of a program's `worker_threads` needs one.  Memory that no process maps (memfd
  contents written with write(), System V segments) is refused outright under
  a policy, and files in the box's tmpfs count against --disk.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from .limits import Limits

if TYPE_CHECKING:  # the policy's parser and compiler load only where a policy is read (prebuilt.py)
    from ..seccomp.policy import Policy

BACKSTOP_SLACK = 4 * 2**30


def traced(limits: Limits, cgroup: bool, one_process: bool) -> bool:
    """Whether the spawner ptraces the run to count every process's CPU time: not for a run of one process
    (`one_process`: the run's policy lets a program make none)."""
    return not cgroup and limits.pids != 1 and not one_process


def one_process(policy: Policy) -> bool:
    """Whether the policy lets a program make threads but no process (as `strict` does); worked out once."""
    known = _one_process.get(policy.digest)
    if known is None:
        known = _one_process[policy.digest] = _makes_no_process(policy)
    return known


_one_process: dict[str, bool] = {}


def _makes_no_process(policy: Policy) -> bool:
    from ..seccomp.policy import CONSTANTS
    from ..seccomp.regions import syscall_regions

    clone_thread = CONSTANTS["CLONE_THREAD"]
    if policy.default.kind == "allow":
        return False
    for name in ("fork", "vfork", "clone3"):
        if any(action.kind == "allow" for action, _ in syscall_regions(policy, name)):
            return False
    # every clone it allows has CLONE_THREAD set in its flags (the first argument)
    return all(term[0][0] & clone_thread and term[0][1] & clone_thread
               for action, term in syscall_regions(policy, "clone") if action.kind == "allow")


def address_space(memory: int) -> int:
    """The per-process RLIMIT_AS backstop: twice the limit, plus what runtimes reserve without using it."""
    return 2 * memory + BACKSTOP_SLACK


def without_unmapped_memory(policy: Policy) -> Policy:
    """The policy, with memfd_create and shmget failing as on a kernel without them (callers fall back)."""
    import dataclasses  # (only where a policy is compiled: a start under a shipped policy loads none)

    from ..seccomp.policy import Action, Rule

    refused = Rule(Action("errno", errno.ENOSYS), where="sandbox/run/fallback.py: memory no process maps")
    return dataclasses.replace(policy, syscalls={**policy.syscalls, "memfd_create": (refused,),
                                                 "shmget": (refused,)})
