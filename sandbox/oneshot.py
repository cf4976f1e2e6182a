"""`sbx run` without an event loop: one box, one run, blocking, on poll(2).

Most `sbx run` commands need no concurrency that the kernel does not give by
itself: one box, one program, its output relayed as it comes, its end
awaited.  An event loop's imports alone (asyncio and anyio: about 60 ms on a
2-core VM) cost more than building the box, so this path builds it and runs
the program through the same parts the API uses (the checked `Spec`, the
starter, the spawner's protocol, the cgroups, the verdict), blocking.  What
needs more (copies in and out, the FUSE union's daemon) goes through the
API (`eligible`).
"""

from __future__ import annotations

import errno
import math
import os
import select
import signal
import socket
import time
from types import FrameType
from typing import Any

from .box import netstack, plan, protocol
from .box.cgroups import BoxCgroup, RunCgroup, delegation
from .box.run_protocol import RunEnd, StartFailure, decode_report
from .box.starter import spawn_starter, write_id_maps
from .errors import SetupError, Stopped
from .run.mask import Mask
from .run.relay import Relay, program_pipe, write_all
from .run.result import Result
from .run.verdict import enforcement, verdict
from .shipped import SPAWNER, STARTER, shipped
from .spec import INHERIT, Spec, exec_failure

_GRACE = 1.0
"""How long the spawner may be late with a wall limit or a kill before the run is given up (IE)."""
_CLOSE_TIMEOUT = 5.0
_CHUNK = 1 << 16
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def eligible(spec: Spec, copies: bool) -> bool:
    """Whether a run of `spec` can go this way: no copies in or out, and no FUSE daemon beside the box."""
    return not copies and not spec.needs_daemon and not spec.network_holder


def run_once(spec: Spec, argv: list[str], stdin: int, stdout: Relay, stderr: Relay) -> Result:
    """Build the box, run `argv` in it with `stdin` and its output relayed, take the box down: the run's record.

    SIGINT and SIGTERM end the run, then the box, and raise `Stopped`, as
    the API's path does (stopping.py).
    """
    with _Signals() as signals:
        box = _Box(spec)
        try:
            spec.pin()
            box.start()
            signals.check()
            return box.run(argv, stdin, stdout, stderr, signals)
        finally:
            box.close()
            spec.close_filters()
            spec.release()


class _Signals:
    """SIGINT and SIGTERM noted, and made readable on an fd that the run's poll watches."""

    def __init__(self) -> None:
        self.got: list[int] = []
        self._saved: list[Any] = []

    def __enter__(self) -> _Signals:
        self.fd, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._saved = [signal.signal(sig, self._note) for sig in _SIGNALS]
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.got.append(signum)

    def check(self) -> None:
        """Raise `Stopped` if a signal came (before the run started: nothing to end but the box)."""
        if self.got:
            raise Stopped(self.got[0])

    def __exit__(self, *exc: object) -> None:
        for sig, handler in zip(_SIGNALS, self._saved):
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._wakeup)
        os.close(self.fd)
        os.close(self._w)


class _Box:
    """One box, started and closed with blocking calls, as `Box` (box/supervisor.py) does on an event loop."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.ids = spec.ids
        self.cgroup: BoxCgroup | None = None
        self.pid = 0
        self.pidfd = -1
        self.sock: socket.socket | None = None
        self.spawner: socket.socket | None = None
        self.netstack: netstack.Stack | None = None

    def start(self) -> None:
        starter, spawner = shipped(STARTER, "the starter"), shipped(SPAWNER, "the spawner")
        found = delegation()
        cgroup_fd = -1
        if found.base is not None:
            try:
                self.cgroup = BoxCgroup(found)
                cgroup_fd = self.cgroup.init_procs()
            except OSError as e:
                raise SetupError(f"cannot make the box's cgroup: {e.strerror or e}") from None
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        unshared_r, unshared_w = os.pipe2(os.O_CLOEXEC)
        mapped_r, mapped_w = os.pipe2(os.O_CLOEXEC)
        theirs = [child.detach(), unshared_w, mapped_r]
        try:
            try:
                self.pid = spawn_starter(starter, spawner, self.ids, theirs, cgroup_fd)
                self.pidfd = os.pidfd_open(self.pid)
            except OSError as e:
                raise SetupError(f"cannot start the box: {e.strerror or e}") from None
            finally:
                for fd in (*theirs, *([cgroup_fd] if cgroup_fd >= 0 else [])):
                    os.close(fd)
            protocol.send_tokens(self.sock, plan.tokens(self.spec.plan()), [])
            if self.ids.mode == "range" and os.read(unshared_r, 1) == b"u":  # else its error is on the socket
                write_id_maps(self.ids, self.pid)
                os.write(mapped_w, b"g")
            try:
                reply, fds = protocol.recv(self.sock)
            except EOFError:
                reply, fds = {"error": "box init exited during setup"}, []
        finally:
            os.close(unshared_r)
            os.close(mapped_w)
        if "error" in reply:
            raise SetupError(reply["error"])
        self.spawner = socket.socket(fileno=fds[0])
        net = self.spec.netstack
        if net is not None:  # the box's way out, before any program runs
            self.netstack = netstack.start(self.pid, net)
            netstack.wait_ready(self.netstack, f"{net.stack}: the box's network")

    def run(self, argv: list[str], stdin: int, stdout: Relay, stderr: Relay, signals: _Signals) -> Result:
        assert self.spawner is not None
        cgroup = self.cgroup is not None
        prepared = self.spec.prepare(argv, None, None, None, INHERIT, cgroup)
        limits = prepared.limits
        fds = [os.dup(stdin)]
        pipes: dict[int, Relay] = {}
        run_cgroup = None
        try:
            for relay in (stdout, stderr):
                r, w = program_pipe()
                pipes[r] = relay
                fds.append(w)
            req = prepared.request(self.ids, cgroup, False, len(fds))
            if prepared.filter_fd is not None:
                fds.append(os.dup(prepared.filter_fd))
            if self.cgroup is not None:
                try:
                    run_cgroup = self.cgroup.new_run(limits)
                except OSError as e:
                    raise SetupError(f"cannot make the run's cgroup: {e.strerror or e}") from None
                fds += [run_cgroup.procs_fd, run_cgroup.cpu_stat_fd]  # closed below; it keeps its path
            protocol.send_tokens(self.spawner, req.tokens(cgroup), fds)
        except BaseException:
            for fd in pipes:
                os.close(fd)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        try:
            wait = _Wait(self.spawner, {fd: (relay, self.spec.mask()) for fd, relay in pipes.items()}, limits.output,
                         run_cgroup, signals)
            report = wait.until_reported(limits.wall_time)
            end = decode_report(report, wait.killed) if report is not None else \
                RunEnd(None, 0.0, time.monotonic() - wait.started, 0,
                       killed=wait.killed or "the sandbox's spawner died (the program killed it)")
            if run_cgroup is not None and isinstance(end, RunEnd):
                try:
                    end = run_cgroup.accounted(end)
                except OSError as e:
                    raise SetupError(f"reading the run's cgroup failed: {e.strerror or e}") from None
        finally:
            if run_cgroup is not None:
                try:
                    run_cgroup.remove()
                except OSError:
                    pass  # the box's cgroup goes with the box, its runs' with it
        if wait.killed == "cancelled":
            raise Stopped(signals.got[0])
        if isinstance(end, StartFailure):
            raise exec_failure(end, req)
        result = verdict(end, limits, output_exceeded=wait.exceeded,
                         enforcement=enforcement(limits, prepared.policy, cgroup, req.trace))
        result.message = self.spec.mask().apply_text(result.message)
        return result

    def close(self) -> None:
        """Close the control sockets (box init exits, and the box with it), then collect the outer process."""
        if self.netstack is not None:
            self.netstack.stop()
            self.netstack = None
        for sock in (self.spawner, self.sock):
            if sock is not None:
                sock.close()
        self.spawner = self.sock = None
        if self.pidfd >= 0:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            if not poller.poll(_CLOSE_TIMEOUT * 1000):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                poller.poll()
            os.close(self.pidfd)
            self.pidfd = -1
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        if self.cgroup is not None:
            cgroup, self.cgroup = self.cgroup, None
            cgroup.remove()


class _Wait:
    """The run's end, with its output relayed as it comes and its wall time watched, on one poll(2)."""

    def __init__(self, spawner: socket.socket, pipes: dict[int, tuple[Relay, Mask]], limit: int | None,
                 run_cgroup: RunCgroup | None, signals: _Signals) -> None:
        self.spawner = spawner
        self.pipes = pipes
        self.limit = limit
        self.used = 0
        self.exceeded = False
        self.killed: str | None = None
        self.sampling = run_cgroup if run_cgroup is not None and not run_cgroup.has_peak else None
        self.signals = signals
        self.started = time.monotonic()
        self.poller = select.poll()
        for fd in (spawner.fileno(), signals.fd, *pipes):
            self.poller.register(fd, select.POLLIN)
        self.open = set(pipes)
        for fd in pipes:
            os.set_blocking(fd, False)

    def until_reported(self, wall: float | None) -> dict[str, Any] | None:
        """The spawner's report; None if it died or stayed silent a grace period past a wall limit or a kill."""
        try:
            deadline = math.inf if wall is None else self.started + wall + _GRACE
            while True:
                now = time.monotonic()
                if now >= deadline:
                    if self.killed is not None:
                        return None  # told to end the run and silent since: it is wedged
                    self._kill("WLE")
                    deadline = now + _GRACE
                    continue
                timeout = min(deadline - now, 0.005 if self.sampling is not None else math.inf)
                events = self.poller.poll(None if timeout == math.inf else max(1, math.ceil(timeout * 1000)))
                if self.sampling is not None:
                    self.sampling.sample_memory()
                for fd, _ in events:
                    if fd == self.spawner.fileno():
                        try:
                            return protocol.recv(self.spawner)[0]
                        except (EOFError, OSError):
                            return None
                    if fd == self.signals.fd:
                        _drain(fd)
                        if self.signals.got and self.killed is None:
                            self._kill("cancelled")
                            deadline = min(deadline, time.monotonic() + _GRACE)
                    else:
                        self._relay(fd)
        finally:
            # every process of the run is gone: what the pipes hold is all there is
            for fd, (relay, mask) in self.pipes.items():
                while self._relay(fd):
                    pass
                os.close(fd)
                _write(relay, mask.flush())

    def _kill(self, reason: str) -> None:
        self.killed = self.killed or reason
        try:
            self.spawner.sendmsg([b"kill"])
        except OSError:
            pass

    def _relay(self, fd: int) -> bool:
        """Relay what the pipe `fd` holds now, within the output limit; False at its end or when it is empty."""
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno == errno.EIO:
                return False
            raise
        if not chunk:
            if fd in self.open:
                self.poller.unregister(fd)
                self.open.discard(fd)
            return False
        if self.exceeded:
            return True
        if self.limit is not None and self.used + len(chunk) > self.limit:
            chunk = chunk[: self.limit - self.used]
            self.exceeded = True
            self._kill("OLE")
        self.used += len(chunk)
        relay, mask = self.pipes[fd]
        _write(relay, mask.feed(chunk))
        return True


def _write(relay: Relay, data: bytes) -> None:
    if data:
        write_all(relay.fd, data)
        relay.ends_line = data.endswith(b"\n")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
