"""Box init: pid 1 of the box's pid namespace.

Forked from the supervisor (so it needs no fresh interpreter), it builds the
root filesystem, starts the box's spawner (spawner.c), then serves run
requests: it hands each to the spawner, watches the CPU and wall limits, and
relays the spawner's exact accounting.  Nothing is imported after
pivot_root: the box cannot see the supervisor's site-packages.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import time
from typing import Any, NoReturn

from . import boxfiles, mounts, network, protocol, seccomp_notify
from . import syscalls as sc
from .monitor import Monitor
from .userns import IdMap

_PRECISE_SLEEP = 0.002
"""Below this, box init sleeps with clock_nanosleep instead of poll (which rounds up to whole ms)."""

_SPAWNER_FD_MIN = 100
"""The spawner binary's fd is kept clear of the low fds a child rearranges."""

_SPAWNER_GRACE = 1.0
"""How long a spawner may take to end a run; one that does not (a program stopped it) is replaced."""


class _Spawner:
    """The box's spawner process and its control socket."""

    def __init__(self, binary: int, ids: IdMap) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            _exec_spawner(binary, theirs, ids)
        theirs.close()

    def close(self) -> None:
        self.sock.close()
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


def main(layout: mounts.Layout, ids: IdMap, sock: socket.socket, spawner_path: str) -> NoReturn:
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        path_fd = os.open(spawner_path, os.O_PATH | os.O_CLOEXEC)
        binary = fcntl.fcntl(path_fd, fcntl.F_DUPFD_CLOEXEC, _SPAWNER_FD_MIN)
        os.close(path_fd)
        mounts.build_root(layout, ids, lambda fd: protocol.send(sock, {"fuse": True}, [fd]))
        socket.sethostname(layout.hostname)
        if layout.loopback:
            network.loopback_up()
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        wakeup = _install_signals()
        spawner = _Spawner(binary, ids)
    except BaseException as e:  # noqa: BLE001 - report anything, then die: the supervisor raises SetupError
        _send_error(sock, e)
        os._exit(1)
    protocol.send(sock, {"ready": True})
    while True:
        try:
            req, fds = protocol.recv(sock)
        except (EOFError, OSError):
            os._exit(0)
        if "op" in req:
            reply, out = _file_op(req, fds, ids)
            protocol.send(sock, reply, out)
            for fd in out:
                os.close(fd)
            continue
        if "argv" not in req:
            continue  # a kill that arrived after its run had ended
        reply, healthy = _run(req, fds, sock, spawner, wakeup)
        if not healthy:
            spawner.close()
            _reap_all()
            spawner = _Spawner(binary, ids)
        protocol.send(sock, reply)


def _file_op(req: dict[str, Any], fds: list[int], ids: IdMap) -> tuple[dict[str, Any], list[int]]:
    try:
        if req["op"] == "read":
            return {"ok": True}, [boxfiles.open_for_reading(req["path"])]
        if req["op"] == "reset":
            boxfiles.reset()
            return {"ok": True}, []
        boxfiles.write_from(req["path"], fds[0], req["mode"], ids.program_uid, ids.program_gid)
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


def _run(req: dict[str, Any], fds: list[int], sock: socket.socket, spawner: _Spawner,
         wakeup: int) -> tuple[dict[str, Any], bool]:
    """One run; returns the reply and whether the spawner is still fit for the next one."""
    monitor = Monitor(req.get("cpu_time"), req.get("wall_time"), spawner.pid)
    rlimits = [str(v) for triple in req["rlimits"] for v in triple]
    env = [f"{k}={v}" for k, v in req["env"].items()]
    flags = ["1" if req.get(name) else "0" for name in ("seccomp", "cgroup")]
    tokens = ["run", *flags, str(len(req["rlimits"])), str(len(req["argv"])), str(len(env)), req["cwd"],
              *rlimits, *req["argv"], *env]
    try:
        protocol.send_tokens(spawner.sock, tokens, fds)
    finally:
        for fd in fds:
            os.close(fd)
    monitor.started = time.monotonic()
    watch = _Watch(monitor, sock, spawner, wakeup)
    killed, report = watch.run()
    ended = time.monotonic()
    if report is not None and "stage" in report:
        return {"exec_error": report}, True
    if report is None:
        return {"killed": killed or "IE", "syscall": watch.syscall, "wait_status": None, "cpu_time": monitor.cpu_used(),
                "wall_time": ended - monitor.started, "memory_peak": 0}, False
    return {
        "killed": killed,
        "syscall": watch.syscall,
        "wait_status": report["wait_status"],
        "cpu_time": report["cpu"],
        "wall_time": ended - monitor.started,
        "memory_peak": report["maxrss"] * 1024,
    }, True


class _Watch:
    """One run as box init sees it: the spawner's messages, the seccomp listener, limits and kill requests.

    `run()` returns (what ended the run early, the spawner's report).  The
    report is the end-of-run accounting, or the reason the program could not
    start; None means the spawner did not answer a kill in time (the program
    stopped it), and then it must be replaced.
    """

    def __init__(self, monitor: Monitor, sock: socket.socket, spawner: _Spawner, wakeup: int) -> None:
        self.monitor, self.sock, self.spawner, self.wakeup = monitor, sock, spawner, wakeup
        self.poller = select.poll()
        for fd in (wakeup, sock, spawner.sock):
            self.poller.register(fd, select.POLLIN)
        self.listener = -1
        self.killed: str | None = None
        self.syscall: str | None = None
        self.deadline: float | None = None

    def kill(self, reason: str) -> None:
        if self.killed is None:
            self.killed = reason
            self.spawner.sock.send(b"kill")
            self.deadline = time.monotonic() + _SPAWNER_GRACE

    def run(self) -> tuple[str | None, dict[str, Any] | None]:
        try:
            return self._loop()
        finally:
            if self.listener >= 0:
                os.close(self.listener)

    def _loop(self) -> tuple[str | None, dict[str, Any] | None]:
        while True:
            if self.killed is None:
                reached, wait = self.monitor.check()
                if reached is not None:
                    self.kill(reached)
                    wait = _SPAWNER_GRACE
            else:
                assert self.deadline is not None
                wait = self.deadline - time.monotonic()
                if wait <= 0:
                    return self.killed, None
            if wait is not None and wait < _PRECISE_SLEEP:
                time.sleep(wait)  # poll() sleeps whole milliseconds; this last stretch needs finer steps
                continue
            for fd, events in self.poller.poll(None if wait is None else wait * 1000):
                if fd == self.spawner.sock.fileno():
                    try:
                        msg, fds = protocol.recv(self.spawner.sock)
                    except EOFError:
                        return self.killed or "IE", None
                    if msg.get("listener") and fds:
                        self.listener = fds[0]
                        self.poller.register(self.listener, select.POLLIN)
                    elif "wait_status" in msg or "stage" in msg:
                        return self.killed, msg
                elif fd == self.listener:
                    self._violation(events)
                elif fd == self.sock.fileno():
                    try:
                        msg, _ = protocol.recv(self.sock)
                    except EOFError:
                        os._exit(0)  # supervisor gone: dying takes the whole pid namespace with us
                    self.kill(str(msg.get("kill", "IE")))
                else:
                    _drain(self.wakeup)
                    if _reaped_spawner(self.spawner.pid):
                        return self.killed or "IE", None

    def _violation(self, events: int) -> None:
        """A call the policy reports: refuse it (it never runs), name it, end the run."""
        if not events & select.POLLIN:
            self.poller.unregister(self.listener)  # every process under the filter is gone
            return
        notification = seccomp_notify.receive(self.listener)
        if notification is None:
            return
        if self.syscall is None:
            self.syscall = notification.syscall
        self.kill("SV")  # first: answered first, the program would run on for a moment with EPERM
        seccomp_notify.answer(self.listener, notification)


def _reaped_spawner(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


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
