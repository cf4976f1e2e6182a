"""--net pasta: passt's namespace mode (netstack.py says what every stack gives a box and what it must not).

What pasta would do by default and a box must not get is turned off:
- ports bound in the box are not forwarded to the host (`-t none -u none`),
  only the ones `--publish` names;
- the host's loopback is not forwarded into the box (`-T none -U none`),
  and the gateway's address is not mapped to it (`--no-map-gw`), unless
  `--host-loopback`: then the box reaches it at the gateway's address.
DNS queries to `DNS` are forwarded to the host's resolver, which may itself
be on the host's loopback.  pasta refuses to start with SIGPIPE ignored,
as a Python process leaves it: the spawn resets it.
"""

from __future__ import annotations

import os
import tempfile

from . import netstack
from .netstack import Network

DNS = "169.254.1.1"


class Pasta:
    """One box's pasta, started by `spawn` (in the thread that will outlive the box: see the module's note)."""

    def __init__(self, pid: int, work: str) -> None:
        self.pid = pid
        self._work = work
        self._ready = False

    @classmethod
    def spawn(cls, target: int, net: Network) -> Pasta:
        """Start pasta for the box whose outer process is `target`; `ready` says when the box's interface is up."""
        args = ["--config-net", "--quiet", "--foreground", "--ipv4-only", "--dns-forward", net.dns,
                "-T", "none", "-U", "none"]
        for flag, proto in (("-t", "tcp"), ("-u", "udp")):
            wanted = [f"{p.ip}/{p.host_port}:{p.box_port}" for p in net.publish if p.proto == proto]
            args += [flag, ",".join(wanted) if wanted else "none"]
        if net.host_gateway is None:
            args.append("--no-map-gw")
        work = tempfile.mkdtemp(prefix="sbx-pasta-")
        args += ["--pid", os.path.join(work, "pid"), "--netns", f"/proc/{target}/ns/net",
                 "--userns", f"/proc/{target}/ns/user"]
        try:
            pid = netstack.spawn("pasta", args, work)
        except BaseException:
            netstack.remove(work)
            raise
        return cls(pid, work)

    def ready(self) -> bool:
        """Whether pasta has set up the box's interface (it writes its pid file then)."""
        if self._ready:
            return True
        try:
            netstack.ended("pasta", self.pid, self._work)
        except BaseException:
            self.pid = 0
            raise
        if netstack.read(os.path.join(self._work, "pid")).strip():
            self._ready = True
            netstack.remove(self._work)
        return self._ready

    def stop(self) -> None:
        netstack.kill(self.pid)
        self.pid = 0
        netstack.remove(self._work)
