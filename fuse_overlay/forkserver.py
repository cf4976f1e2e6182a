"""Serving many unions from one warm interpreter: a fork per mount.

A daemon's own start (the interpreter, trio, pyfuse3, the shim) costs
200-300 ms, more than the box it serves.  A caller that mounts many unions
(sbx's pools, a service, a long command) spawns this once: it loads what a
daemon needs, then forks one daemon per request, on the FUSE connection the
request brings.  It never mounts anything itself and runs no event loop, so
every daemon starts from a clean copy of it.

usage: python -m fuse_overlay.forkserver PARENT_PID   (fd 3: the request socket)

Requests on fd 3 (SOCK_SEQPACKET), one JSON object each:
    {"argv": [OPTION...], "cgroup": BOOL}
        with fds: the FUSE connection, the daemon's stderr, with "cgroup" a cgroup.procs the
        daemon joins before it serves, then any fds the daemon keeps open for its life (locks);
answered {"pid": N} with a pidfd of the daemon, or {"error": MESSAGE}.  The
daemon runs `sbx-overlayfs -f OPTION... /dev/fd/FD`.  The server exits when
its parent closes its end, and dies with its parent.
"""

from __future__ import annotations

import array
import ctypes
import json
import os
import signal
import socket
import sys
from typing import NoReturn

from . import cli  # trio, pyfuse3 and the shim: loaded here once, for every daemon

_PR_SET_PDEATHSIG = 1
_MAX_FDS = 16


def main(argv: list[str]) -> NoReturn:
    os.closerange(4, 2**31 - 1)  # whatever the caller left inheritable (a CI runner's pipes): no daemon holds it
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(argv[0]):
        os._exit(1)
    ctl = socket.socket(fileno=3)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the parent's to handle
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    while True:
        try:
            data, anc, _, _ = ctl.recvmsg(1 << 16, socket.CMSG_SPACE(_MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
        except OSError:
            os._exit(0)
        if not data:
            os._exit(0)
        fds = _fds(anc)
        try:
            request = json.loads(data)
            pid, pidfd = _fork(request["argv"], fds, bool(request.get("cgroup")), ctl)
            reply, out = {"pid": pid}, [pidfd]
        except (OSError, ValueError, KeyError, TypeError) as e:
            reply, out = {"error": f"cannot start the union filesystem daemon: {e}"}, []
        finally:
            for fd in fds:
                os.close(fd)
        ctl.sendmsg([json.dumps(reply).encode()],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", out).tobytes())] if out else [])
        for fd in out:
            os.close(fd)


def _fds(anc: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return list(fds)


def _fork(options: list[str], fds: list[int], cgroup: bool, ctl: socket.socket) -> tuple[int, int]:
    """A daemon on the connection fds[0], with stderr fds[1], keeping fds[2:]; its pid and a pidfd of it.

    SIGCHLD is blocked until the pidfd is open, so that the daemon cannot be
    reaped (and its pid reused) before then.
    """
    if len(fds) < 2 + cgroup or not all(isinstance(o, str) for o in options):
        raise ValueError("a request needs the FUSE connection, a stderr and, when it says so, a cgroup")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        pid = os.fork()
        if pid == 0:
            _daemon(options, fds, cgroup, ctl)
        return pid, os.pidfd_open(pid)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _daemon(options: list[str], fds: list[int], cgroup: bool, ctl: socket.socket) -> NoReturn:
    status = 1
    try:
        ctl.close()
        if cgroup:
            os.write(fds[2], b"0")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for sig in (signal.SIGCHLD, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(fds[1], 2)  # the connection and the held fds stay open: no exec follows
        status = cli.main(["-f", *options, f"/dev/fd/{fds[0]}"])
    except BaseException as e:  # noqa: BLE001 - its last words, for the caller's one-line message
        print(f"sbx-overlayfs: {e}", file=sys.stderr)
    finally:
        sys.stderr.flush()
        os._exit(status)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    main(sys.argv[1:])
