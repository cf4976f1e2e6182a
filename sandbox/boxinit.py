"""Box init: pid 1 of the box's pid namespace.

A fork of the outer process, a fresh interpreter (boxstart.py) that holds
nothing of the supervisor's; it builds the root filesystem and starts the box's spawner (spawner.c), whose control
socket it hands to the supervisor: runs go from the supervisor to the
spawner and back, with no stop here.  Box init then serves file copies and
resets, replaces a spawner on request, and continues a spawner the program
stopped (only pid 1 is out of every box process's reach).  Nothing is
imported after pivot_root: the box cannot see the supervisor's site-packages.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
from typing import Any, NoReturn

from . import boxfiles, mounts, plan, protocol
from . import syscalls as sc
from .userns import IdMap, fix_loginuid

_SPAWNER_FD_MIN = 100
"""The spawner binary's fd is kept clear of the low fds a child rearranges."""


class _Spawner:
    """The box's spawner process, and its control socket until the supervisor has it."""

    def __init__(self, binary: int, ids: IdMap) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            _exec_spawner(binary, theirs, ids)
        theirs.close()

    def hand_over(self, sock: socket.socket, reply: dict[str, Any]) -> None:
        """Send the control socket to the supervisor, keeping no copy: the spawner's death must read as EOF there."""
        try:
            protocol.send(sock, reply, [self.sock.fileno()])
        finally:
            self.sock.close()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exec_spawner(binary: int, sock: socket.socket, ids: IdMap) -> NoReturn:
    """In the forked child: undo what Python set up (ignored signals survive execve), then become the spawner."""
    try:
        for sig in signal.valid_signals():
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        signal.set_wakeup_fd(-1)
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.dup2(sock.fileno(), 3)
        os.dup2(binary, 4, inheritable=False)
        sc.close_range(5)
        if ids.mode == "single":
            sc.drop_bounding_set()  # the spawner keeps no capability across execve here, so drop it now
        use_setgroups = "1" if ids.mode == "range" else "0"
        os.execve(4, ["sbx-spawner", "3", str(ids.program_uid), str(ids.program_gid), use_setgroups], {})
    finally:
        os._exit(127)


def main(layout: mounts.Layout, steps: tuple[plan.Step, ...], ids: IdMap, sock: socket.socket,
         spawner_path: str) -> NoReturn:
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        path_fd = os.open(spawner_path, os.O_PATH | os.O_CLOEXEC)
        binary = fcntl.fcntl(path_fd, fcntl.F_DUPFD_CLOEXEC, _SPAWNER_FD_MIN)
        os.close(path_fd)
        last_pid = mounts.build_root(steps, lambda fd: protocol.send(sock, {"fuse": True}, [fd]))
        # a union root is replaced, never reset (its upper keeps the run's writes): nothing to take for it
        resetter = None if layout.lowers else \
            boxfiles.Resetter(boxfiles.writable_dirs(layout.home) + layout.tmpfs, last_pid)
        if resetter is None:
            os.close(last_pid)
        fix_loginuid(ids)
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        wakeup = _install_signals()
        spawner = _Spawner(binary, ids)
        if resetter is not None:
            resetter.pids_start_after(spawner.pid)
    except BaseException as e:  # noqa: BLE001 - report anything, then die: the supervisor raises SetupError
        _send_error(sock, e)
        os._exit(1)
    spawner.hand_over(sock, {"ready": True})
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wakeup, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == wakeup:
                _drain(wakeup)
                _reap(spawner.pid)
                continue
            try:
                req, fds = protocol.recv(sock)
            except (EOFError, OSError):
                os._exit(0)  # supervisor gone: dying takes the whole pid namespace with us
            if req.get("op") == "respawn":
                spawner.kill()
                _reap_all()
                spawner = _Spawner(binary, ids)
                if resetter is not None:
                    resetter.pids_start_after(spawner.pid)
                spawner.hand_over(sock, {"ok": True})
                continue
            reply, out = _file_op(req, fds, ids, layout.home, resetter)
            protocol.send(sock, reply, out)
            for fd in out:
                os.close(fd)


def _file_op(req: dict[str, Any], fds: list[int], ids: IdMap, home: str,
             resetter: boxfiles.Resetter | None) -> tuple[dict[str, Any], list[int]]:
    try:
        if req["op"] == "read":
            return {"ok": True}, [boxfiles.open_for_reading(req["path"], home)]
        if req["op"] == "reset":
            if resetter is None:
                raise ValueError("a box with a union root cannot be reset")
            resetter.reset()
            return {"ok": True}, []
        if req["op"] == "symlink":
            boxfiles.make_symlink(req["path"], home, req["target"], ids.program_uid, ids.program_gid)
        else:
            boxfiles.write_from(req["path"], home, fds[0], req["mode"], ids.program_uid, ids.program_gid)
        return {"ok": True}, []
    except (OSError, ValueError) as e:
        return {"error": str(e) if not isinstance(e, OSError) or not e.strerror else
                f"{req.get('path', req['op'])}: {e.strerror}"}, []
    finally:
        for fd in fds:
            os.close(fd)


def _send_error(sock: socket.socket, e: BaseException) -> None:
    message = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
    try:
        protocol.send(sock, {"error": message})
    except OSError:
        pass


def _install_signals() -> int:
    """Pid 1 gets only the signals it handles; keep it that way, and turn SIGCHLD into a readable fd."""
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    return r


def _reap(spawner: int) -> None:
    """Collect whatever died (orphans of a dead spawner), and continue the spawner if the program stopped it.

    In the single id mapping the program shares the spawner's uid and may
    SIGSTOP it; stopped, it would enforce no limit and end no run.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == spawner and os.WIFSTOPPED(status):
            os.kill(pid, signal.SIGCONT)


def _reap_all() -> None:
    """After a spawner failed: kill every process but pid 1 and collect them."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
