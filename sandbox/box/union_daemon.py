"""The FUSE union's daemons, forked from one warm interpreter per supervisor process (fuse_overlay.forkserver).

A daemon started as a fresh interpreter costs 200-300 ms per box, more than
the rest of the box.  The fork server is spawned (not forked: it holds
nothing of this process's memory) when the first union is served, and again
if it died or this process forked; every daemon after the first starts in a
few milliseconds.  A daemon is not this process's child, so it is watched
and killed through a pidfd, which the server sends with its pid.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import sys
import threading
from typing import IO

from . import protocol

_QUIET = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
"""The server reads and prints nothing: the caller's terminal and pipes are no daemon's."""


class Daemon:
    """A running union daemon: its pid, a pidfd that turns readable when it dies, and what the supervisor calls it
    and where its stderr goes (to explain its death)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.what = "the union filesystem daemon"
        self.log: IO[bytes] | None = None

    def last_words(self) -> str:
        """The last line it wrote, for the one-line message of a failure."""
        if self.log is None:
            return "it exited without a word"
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "it exited without a word"

    @property
    def dead(self) -> bool:
        poller = select.poll()  # (not select(2): a service's fds go past FD_SETSIZE)
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        os.close(self.pidfd)
        if self.log is not None:
            self.log.close()


class ForkServer:
    """The warm interpreter that forks each daemon: one per supervisor process."""

    _lock = threading.Lock()
    _current: ForkServer | None = None

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            high = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 100)  # clear of fd 3, its target
            try:
                self.pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "fuse_overlay.forkserver",
                                                           str(os.getpid())], dict(os.environ),
                                          file_actions=[(os.POSIX_SPAWN_DUP2, high, 3), *_QUIET], setsigmask=())
            finally:
                os.close(high)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.owner = os.getpid()

    @classmethod
    def fork_daemon(cls, options: list[str], fuse_fd: int, log_fd: int, cgroup_procs: int,
                    holds: tuple[int, ...]) -> Daemon:
        """A daemon serving the FUSE connection `fuse_fd` with `options`, its stderr `log_fd`, in the cgroup whose
        `cgroup.procs` is open as `cgroup_procs` (-1: this process's), keeping `holds` open.

        Blocking (the first call waits for the server to boot): call it from a worker thread.
        """
        with cls._lock:
            for attempt in (1, 2):
                server = cls._up()
                try:
                    joins = [cgroup_procs] if cgroup_procs >= 0 else []
                    protocol.send(server.sock, {"argv": options, "cgroup": bool(joins)},
                                  [fuse_fd, log_fd, *joins, *holds])
                    reply, fds = protocol.recv(server.sock)
                except (EOFError, OSError):
                    server.close()  # it died: a new one, once
                    cls._current = None
                    if attempt == 2:
                        raise OSError("the union filesystem's fork server died") from None
                    continue
                if "error" in reply:
                    raise OSError(reply["error"])
                return Daemon(int(reply["pid"]), fds[0])
        raise AssertionError("unreachable")

    @classmethod
    def prime(cls) -> None:
        """Spawn the server now, so that its boot (an interpreter, trio and pyfuse3: 100-200 ms) runs while the
        caller builds its first union box; `fork_daemon` waits only for what is left of it.  A server that cannot
        be spawned is reported by `fork_daemon`, which tries again."""
        with cls._lock:
            try:
                cls._up()
            except OSError:
                pass

    @classmethod
    def _up(cls) -> ForkServer:
        """The server of this process, spawned if there is none yet or this process forked (with the lock held)."""
        server = cls._current
        if server is None or server.owner != os.getpid():
            server = cls._current = ForkServer()
        return server

    def close(self) -> None:
        self.sock.close()
        if self.owner == os.getpid():
            os.waitpid(self.pid, 0)
