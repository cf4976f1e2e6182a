"""--net slirp4netns: where pasta is missing, rootless podman's older stack (netstack.py says what every stack gives
a box and what it must not).

slirp4netns makes the box's tap0 (10.0.2.100/24, gateway 10.0.2.2, DNS at
10.0.2.3 forwarded to the host's resolver) and carries its traffic through
libslirp.  Its own defaults that a box must not get are turned off: the
host's loopback at the gateway's address (`--disable-host-loopback`, unless
`--host-loopback`); and it forwards no port unless asked, through its API
socket, for each `--publish`.  It runs under its own seccomp filter
(`--enable-seccomp`), and says it is ready on a pipe (`--ready-fd`).
"""

from __future__ import annotations

import json
import os
import select
import socket
import tempfile

from ..errors import SetupError
from . import netstack
from .netstack import Network

DNS = "10.0.2.3"
HOST = "10.0.2.2"
"""The gateway's address, the host's loopback under --host-loopback."""


class Slirp:
    """One box's slirp4netns, started by `spawn` (in the thread that will outlive the box)."""

    def __init__(self, pid: int, work: str, ready_fd: int, net: Network) -> None:
        self.pid = pid
        self._work = work
        self._ready_fd = ready_fd
        self._net = net
        self._ready = False

    @classmethod
    def spawn(cls, target: int, net: Network) -> Slirp:
        work = tempfile.mkdtemp(prefix="sbx-slirp-")
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        args = ["--configure", "--mtu=65520", f"--ready-fd={ready_w}", "--enable-seccomp", "--netns-type=path",
                f"--userns-path=/proc/{target}/ns/user"]
        if net.host_gateway is None:
            args.append("--disable-host-loopback")
        if net.publish:
            args.append(f"--api-socket={os.path.join(work, 'api.sock')}")
        args += [f"/proc/{target}/ns/net", "tap0"]
        try:
            pid = netstack.spawn("slirp4netns", args, work, keep=(ready_w,))
        except BaseException:
            os.close(ready_r)
            netstack.remove(work)
            raise
        finally:
            os.close(ready_w)
        return cls(pid, work, ready_r, net)

    def ready(self) -> bool:
        """Whether the box's interface is up (slirp4netns writes to the ready pipe then) and its ports published."""
        if self._ready:
            return True
        try:
            netstack.ended("slirp4netns", self.pid, self._work)
        except BaseException:
            self.pid = 0
            raise
        if not select.select([self._ready_fd], [], [], 0)[0]:
            return False
        if os.read(self._ready_fd, 1) != b"1":
            return False  # it closed the pipe: it is ending, and says why once it has
        for p in self._net.publish:
            self._api({"execute": "add_hostfwd", "arguments": {"proto": p.proto, "host_addr": p.ip,
                                                              "host_port": p.host_port, "guest_port": p.box_port}},
                      f"-p {p.ip}:{p.host_port}:{p.box_port}/{p.proto}")
        self._ready = True
        os.close(self._ready_fd)
        self._ready_fd = -1
        netstack.remove(self._work)
        return True

    def _api(self, request: dict[str, object], what: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(netstack.READY_TIMEOUT)
            try:
                s.connect(os.path.join(self._work, "api.sock"))
                s.sendall(json.dumps(request).encode())
                s.shutdown(socket.SHUT_WR)
                answer = json.loads(s.makefile("rb").read() or b"{}")
            except (OSError, ValueError) as e:
                raise SetupError(f"slirp4netns: cannot publish {what}: {e}") from None
        if "error" in answer or "return" not in answer:
            raise SetupError(f"slirp4netns: cannot publish {what}: "
                             f"{answer.get('error', {}).get('desc', 'no answer')}")

    def stop(self) -> None:
        netstack.kill(self.pid)
        self.pid = 0
        if self._ready_fd >= 0:
            os.close(self._ready_fd)
            self._ready_fd = -1
        netstack.remove(self._work)
