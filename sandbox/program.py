"""The last steps of the program's own process, between box init's fork and execve.

Order matters: the bounding set can only be emptied while still root, the
uid only changed while CAP_SETUID is held, and seccomp comes last so that
none of these calls has to be allowed by the policy.  Any failure is sent to
box init over `status` (with the stage that failed) and the process exits.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import socket
from typing import Any, NoReturn

from . import protocol
from . import syscalls as sc
from .userns import IdMap

_STATUS_FD = 3
_STUB_FD = 4


def exec_program(req: dict[str, Any], fds: list[int], status: socket.socket, ids: IdMap, stub: int) -> NoReturn:
    """Drop everything, then exec the stub, which forks and execs the program (see exec_stub.c)."""
    stage = "setup"
    try:
        os.setsid()
        _reset_signals()
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        os.dup2(status.fileno(), _STATUS_FD)
        os.dup2(stub, _STUB_FD, inheritable=False)
        status = socket.socket(fileno=_STATUS_FD)
        sc.close_range(_STUB_FD + 1)
        stage = "cwd"
        os.chdir(req["cwd"])
        stage = "setup"
        for res, soft, hard in req["rlimits"]:
            resource.setrlimit(res, (soft, hard))
        sc.drop_bounding_set()
        if ids.mode == "range":
            os.setgroups([])
        os.setresgid(ids.program_gid, ids.program_gid, ids.program_gid)
        os.setresuid(ids.program_uid, ids.program_uid, ids.program_uid)
        sc.clear_capabilities()
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
        os.execve(_STUB_FD, ["sbx-exec", str(_STATUS_FD), "-1", *req["argv"]], req["env"])
    except OSError as e:
        _report(status, stage, e.errno or errno.EINVAL, e.strerror or str(e))
    except BaseException as e:  # noqa: BLE001 - whatever happens, the child must not return into init's loop
        _report(status, stage, errno.EINVAL, f"{type(e).__name__}: {e}")
    os._exit(127)


def _reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive execve: undo that."""
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.set_wakeup_fd(-1)


def _report(status: socket.socket, stage: str, code: int, message: str) -> None:
    try:
        protocol.send(status, {"stage": stage, "errno": code, "message": message})
    except OSError:
        pass
