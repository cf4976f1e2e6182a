"""Box init: pid 1 of the box's pid namespace.

Forked from the supervisor (so it needs no fresh interpreter), it builds the
root filesystem, then serves run requests over its control socket: fork the
program, watch it, kill everything when it ends, and send back the exact
accounting from wait4.  Nothing is imported after pivot_root: the box cannot
see the supervisor's site-packages.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import time
from typing import Any, NoReturn

from . import mounts, network, program, protocol
from . import syscalls as sc
from .monitor import Monitor
from .userns import IdMap


_PRECISE_SLEEP = 0.002
"""Below this, box init sleeps with clock_nanosleep instead of poll (which rounds up to whole ms)."""

_STUB_FD_MIN = 100
"""The stub's fd is kept out of the way of the low fds the program's process rearranges."""


def main(layout: mounts.Layout, ids: IdMap, sock: socket.socket, stub_path: str) -> NoReturn:
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        path_fd = os.open(stub_path, os.O_PATH | os.O_CLOEXEC)
        stub = fcntl.fcntl(path_fd, fcntl.F_DUPFD_CLOEXEC, _STUB_FD_MIN)
        os.close(path_fd)
        mounts.build_root(layout, ids)
        socket.sethostname(layout.hostname)
        if layout.loopback:
            network.loopback_up()
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        wakeup = _install_signals()
    except BaseException as e:  # noqa: BLE001 - report anything, then die: the supervisor raises SetupError
        _send_error(sock, e)
        os._exit(1)
    protocol.send(sock, {"ready": True})
    _serve(sock, ids, wakeup, stub)


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


def _serve(sock: socket.socket, ids: IdMap, wakeup: int, stub: int) -> NoReturn:
    while True:
        try:
            req, fds = protocol.recv(sock)
        except (EOFError, OSError):
            os._exit(0)
        if "argv" not in req:
            continue  # a kill that arrived after its run had ended
        reply = _run(req, fds, sock, ids, wakeup, stub)
        protocol.send(sock, reply)


def _run(req: dict[str, Any], fds: list[int], sock: socket.socket, ids: IdMap, wakeup: int,
         stub: int) -> dict[str, Any]:
    status, status_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    monitor = Monitor(req.get("cpu_time"), req.get("wall_time"))
    pid = os.fork()
    if pid == 0:
        status.close()
        program.exec_program(req, fds, status_child, ids, stub)
    monitor.main_pid = pid
    status_child.close()
    for fd in fds:
        os.close(fd)
    with status:
        failure = _exec_outcome(status, monitor)
        if failure is not None:
            _kill_all(monitor)
            return {"exec_error": failure}
        killed = _watch(monitor, sock, status, wakeup)
        ended = time.monotonic()
        _kill_all(monitor)
    return {
        "killed": killed,
        "wait_status": monitor.main_status if monitor.main_status is not None else monitor.stub_status,
        "cpu_time": monitor.cpu_time,
        "wall_time": ended - monitor.started,
        "memory_peak": monitor.peak_rss,
    }


def _exec_outcome(status: socket.socket, monitor: Monitor) -> dict[str, Any] | None:
    """None once the program runs, else what failed (from the Python child or the stub)."""
    while True:
        try:
            msg, fds = protocol.recv(status)
        except EOFError:
            return {"stage": "setup", "errno": 0, "message": "the program's process died before execve"}
        for fd in fds:
            os.close(fd)
        if msg.get("exec"):
            monitor.overhead = msg["overhead"]
            monitor.started = time.monotonic()
            return None
        if "stage" in msg:
            return msg


def _watch(monitor: Monitor, sock: socket.socket, status: socket.socket, wakeup: int) -> str | None:
    """Wait for the program to end or a limit to be hit; returns the verdict of a kill, if any."""
    poller = select.poll()
    for fd in (wakeup, sock, status):
        poller.register(fd, select.POLLIN)
    while True:
        if _reap(monitor):
            _stub_report(monitor, status)  # sent before the stub exited: already queued, or EOF
            return None
        reached, wait = monitor.check()
        if reached:
            return reached
        if wait is not None and wait < _PRECISE_SLEEP:
            time.sleep(wait)  # poll() sleeps whole milliseconds; this last stretch needs finer steps
            continue
        for fd, _ in poller.poll(None if wait is None else wait * 1000):
            if fd == wakeup:
                _drain(wakeup)
            elif fd == status.fileno():
                if _stub_report(monitor, status):
                    return None
                poller.unregister(status)  # EOF: the stub died without a report; its reaping ends the run
            else:
                try:
                    msg, _ = protocol.recv(sock)
                except EOFError:
                    os._exit(0)  # supervisor gone: dying takes the whole pid namespace with us
                return str(msg.get("kill", "IE"))


def _stub_report(monitor: Monitor, status: socket.socket) -> bool:
    """The stub's exact wait4 of the program: its status and its own peak RSS."""
    try:
        msg, _ = protocol.recv(status)
    except EOFError:
        return False
    monitor.main_status = msg["wait_status"]
    monitor.peak_rss = max(monitor.peak_rss, msg["maxrss"] * 1024)
    return True


def _reap(monitor: Monitor, block: bool = False) -> bool:
    """Collect every exited child's accounting; True once the stub (the program's parent) is among them.

    The stub's own peak RSS is not the program's (it inherited box init's), so
    only its CPU time counts; the program's peak comes from the stub's report.
    """
    found = False
    while True:
        try:
            pid, wstatus, ru = os.wait4(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        main = pid == monitor.main_pid
        monitor.reaped(ru.ru_utime, ru.ru_stime, 0 if main else ru.ru_maxrss)
        if main:
            monitor.stub_status = wstatus
            found = True


def _kill_all(monitor: Monitor) -> None:
    """Kill every process of the run (pid 1 is spared by kill(-1)) and reap them all."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(monitor, block=True)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
