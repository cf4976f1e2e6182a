"""The box's first processes, started fresh: a zygote interpreter, and the outer process it forks for each box.

A fork of the supervisor would carry the caller's memory (other boxes'
data), command line and environment into the box as its pid 1, and forking
a threaded process can deadlock; a fresh interpreter per box would cost more
than the rest of a box's start.  So each supervisor process spawns one zygote,
`python -I -m sandbox.boxstart PARENT`: single-threaded, it imports only what
box init needs (no event loop, no API) and holds nothing of the caller's.  For each
box it forks an outer process, which takes its layout over the box's control
socket and does what box.py describes: its cgroup, the new user namespace and
its id map, the other namespaces, and box init as its child.

The zygote reads requests on fd 3 (SEQPACKET): {"cgroup": bool} with the
box's control socket, the id-map handshake pipes (to and from the supervisor)
and, with a cgroup, the box's init cgroup.procs; it answers {"pid": N} or
{"error": ...}.  It exits when the supervisor closes its end.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
from typing import Any, NoReturn

from . import boxinit, plan, protocol
from . import syscalls as sc
from .mounts import Bind, Layout
from .userns import IdMap, write_single_map

NAMESPACES = (
    sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWCGROUP
)


def parameters(layout: Layout, steps: tuple[plan.Step, ...], ids: IdMap, spawner: str) -> dict[str, Any]:
    """What the supervisor sends first (JSON: nothing here can run code when read)."""
    return {"layout": dataclasses.asdict(layout), "plan": plan.encode(steps), "ids": dataclasses.asdict(ids),
            "spawner": spawner}


def _from_parameters(p: dict[str, Any]) -> tuple[Layout, tuple[plan.Step, ...], IdMap, str]:
    lay = p["layout"]
    layout = Layout(**{**lay, "binds": tuple(Bind(**b) for b in lay["binds"]), "tmpfs": tuple(lay["tmpfs"]),
                       "lowers": tuple(lay["lowers"])})
    ids = p["ids"]
    idmap = IdMap(**{**ids, "subuid": tuple(ids["subuid"]) if ids["subuid"] else None,
                     "subgid": tuple(ids["subgid"]) if ids["subgid"] else None})
    return layout, plan.decode(p["plan"]), idmap, p["spawner"]


def main(argv: list[str]) -> NoReturn:
    """The zygote: fork an outer process per request, until the supervisor is gone.

    posix_spawn hands over every descriptor the caller left inheritable (a
    shell's `exec 7</etc`, a CI runner's pipes): they are closed first, so
    that no box's outer process or box init ever holds one.  The spawn made
    stdin and stdout /dev/null; stderr stays the zygote's, for a crash's
    traceback, and is /dev/null in the outer processes it forks.
    """
    sc.close_range(4)
    ctl = socket.socket(fileno=3)
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(argv[0]):
        os._exit(1)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the outers; the supervisor watches pidfds
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the supervisor's to handle
    me = os.getpid()
    while True:
        try:
            req, fds = protocol.recv(ctl)
        except (EOFError, OSError):
            os._exit(0)
        try:
            pid = os.fork()
        except OSError as e:
            protocol.send(ctl, {"error": f"cannot fork the box's outer process: {e.strerror}"})
            pid = -1
        if pid == 0:
            ctl.close()
            os.dup2(null, 2)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            outer(fds[0], fds[1], fds[2], fds[3] if req["cgroup"] else -1, zygote=me)
        for fd in fds:
            os.close(fd)
        if pid > 0:
            protocol.send(ctl, {"pid": pid})


def outer(sock_fd: int, unshared_w: int, mapped_r: int, cgroup_fd: int, zygote: int) -> NoReturn:
    sock = socket.socket(fileno=sock_fd)
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != zygote:
            os._exit(1)
        layout, steps, ids, spawner = _from_parameters(protocol.recv(sock)[0])
        if cgroup_fd >= 0:
            os.write(cgroup_fd, b"0")
            os.close(cgroup_fd)
        sc.unshare(sc.CLONE_NEWUSER)
        if ids.mode == "single":
            write_single_map(ids)
        else:
            os.write(unshared_w, b"u")
            if os.read(mapped_r, 1) != b"g":
                os._exit(1)
        os.close(unshared_w)
        os.close(mapped_r)
        sc.unshare(NAMESPACES)
        pid = os.fork()
        if pid == 0:
            boxinit.main(layout, steps, ids, sock, spawner)
        sock.close()
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    except BaseException as e:  # noqa: BLE001 - report anything, then die: the supervisor raises SetupError
        try:
            protocol.send(sock, {"error": e.strerror if isinstance(e, OSError) and e.strerror else str(e)})
        finally:
            os._exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
