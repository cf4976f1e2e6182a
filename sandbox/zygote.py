"""The fresh interpreter that forks each box's outer process (boxstart.py), from the supervisor's side.

It carries nothing of the caller's process (see boxstart.py).  This module
loads no event loop, so that the command line can start the zygote before it loads
everything else (entry.py).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading

from . import protocol


_QUIET = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)]
"""The zygote reads and prints nothing: the caller's stdin and stdout (a terminal, a pipe) stay out of every box."""


class Zygote:
    """The fresh interpreter that forks each box's outer process (boxstart.py): one per supervisor process.

    Spawned when the first sandbox is made, so that it boots while the caller
    compiles its policy, and again if it died or this process forked.  A
    request is one message each way; the fork takes about a millisecond, so
    the caller waits for it in place.
    """

    _lock = threading.Lock()
    _current: Zygote | None = None

    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            high = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 100)  # clear of fd 3, its target
            try:
                self.pid = os.posix_spawn(sys.executable, [sys.executable, "-I", "-m", "sandbox.boxstart",
                                                           str(os.getpid())], {},
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
    def start(cls) -> Zygote:
        """The running zygote, spawned now if there is none: it boots (~80 ms) while the caller goes on."""
        with cls._lock:
            return cls._started()

    @classmethod
    def _started(cls) -> Zygote:
        zygote = cls._current
        if zygote is not None and zygote.owner != os.getpid():  # this process forked: that was the parent's
            zygote.close()
            zygote = None
        if zygote is None:
            zygote = cls._current = Zygote()
        return zygote

    @classmethod
    def fork_outer(cls, fds: list[int]) -> int:
        """A new outer process holding `fds` (control socket, handshake pipes, the cgroup's procs if a 4th)."""
        with cls._lock:
            for attempt in (1, 2):
                zygote = cls._started()
                try:
                    protocol.send(zygote.sock, {"cgroup": len(fds) == 4}, fds)
                    reply, _ = protocol.recv(zygote.sock)
                except (EOFError, OSError):
                    zygote.close()  # it died (killed, or this process forked): a new one, once
                    cls._current = None
                    if attempt == 2:
                        raise
                    continue
                if "error" in reply:
                    raise OSError(reply["error"])
                return int(reply["pid"])
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.sock.close()
        if self.owner == os.getpid():
            os.waitpid(self.pid, 0)
