"""A box's way out under `--net pasta`: passt's namespace mode gives the box's network namespace outbound TCP and
UDP through a user-mode stack on the host, and DNS, with no privilege.

pasta runs as the caller, outside the box, and joins the box's user and
network namespaces (the outer process's, starter.c) only to make and set
up the box's interface.  What it would do by default and a box must not
get is turned off:
- ports bound in the box are not forwarded to the host (`-t none -u none`),
  only the ones `--publish` names, on 127.0.0.1 unless an address is given;
- the host's loopback is not forwarded into the box (`-T none -U none`),
  and the gateway's address is not mapped to it (`--no-map-gw`), unless
  `--host-loopback`: then the box reaches the host's 127.0.0.1 at the
  gateway's address, named `host.containers.internal` as podman does.
DNS queries to `DNS` are forwarded to the host's resolver, which may itself
be on the host's loopback.

pasta is started through `setpriv --pdeathsig KILL`: it dies with the thread
that started it, so it never outlives the supervisor, and the box's close
ends it first.  It refuses to start with SIGPIPE ignored, as a Python
process leaves it: the spawn resets it.
"""

from __future__ import annotations

import os
import re
import signal

from .. import tools
from ..errors import ConfigError, SetupError
from ..record import Record

DNS = "169.254.1.1"
HOST_NAME = "host.containers.internal"
READY_TIMEOUT = 10.0
_PUBLISH = re.compile(r"(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+):(?P<box>\d+)(?:/(?P<proto>tcp|udp))?")


class Publish(Record):
    """A box port on a host address and port (`-p [IP:]HOSTPORT:BOXPORT[/tcp|udp]`)."""

    ip: str
    host_port: int
    box_port: int
    proto: str = "tcp"


class Network(Record):
    """What pasta gives a box: the gateway's address as the box's name for the host (None: the host's loopback
    is out of reach), and the published ports."""

    host_gateway: str | None
    publish: tuple[Publish, ...] = ()


def parse_publish(spec: str) -> Publish:
    import ipaddress  # (only for a run that publishes: every start imports this module)

    found = _PUBLISH.fullmatch(spec)
    if not found:
        raise ConfigError(f"--publish {spec!r}: expected [IP:]HOSTPORT:BOXPORT[/tcp|udp]")
    ip = (found["ip"] or "127.0.0.1").strip("[]")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ConfigError(f"--publish {spec!r}: {ip} is not an IP address") from None
    ports = int(found["host"]), int(found["box"])
    if not all(0 < port < 65536 for port in ports):
        raise ConfigError(f"--publish {spec!r}: ports are 1 to 65535")
    return Publish(ip, *ports, found["proto"] or "tcp")


def network(host_loopback: bool, publish: tuple[Publish, ...]) -> Network:
    """The network a box gets under --net pasta, checked before anything starts: pasta is installed, and with
    `host_loopback` the host has a default IPv4 gateway (pasta gives the box the host's)."""
    if tools.find("pasta") is None:
        raise ConfigError("--net pasta: pasta not found (install package passt)")
    gateway = _default_gateway() if host_loopback else None
    if host_loopback and gateway is None:
        raise ConfigError("--host-loopback: the host has no default IPv4 route, whose gateway the box would use")
    return Network(gateway, publish)


def _default_gateway() -> str | None:
    import ipaddress

    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000" and int(fields[3], 16) & 2:  # RTF_GATEWAY
                    return str(ipaddress.IPv4Address(int(fields[2], 16).to_bytes(4, "little")))
    except (OSError, ValueError):
        pass
    return None


class Pasta:
    """One box's pasta, started by `spawn` (in the thread that will outlive the box: see the module's note)."""

    def __init__(self, pid: int, work: str) -> None:
        self.pid = pid
        self._work = work
        self._ready = False

    @classmethod
    def spawn(cls, target: int, net: Network) -> Pasta:
        """Start pasta for the box whose outer process is `target`; `ready` says when the box's interface is up."""
        args = ["--config-net", "--quiet", "--foreground", "--ipv4-only", "--dns-forward", DNS,
                "-T", "none", "-U", "none"]
        for flag, proto in (("-t", "tcp"), ("-u", "udp")):
            wanted = [f"{p.ip}/{p.host_port}:{p.box_port}" for p in net.publish if p.proto == proto]
            args += [flag, ",".join(wanted) if wanted else "none"]
        if net.host_gateway is None:
            args.append("--no-map-gw")
        import tempfile

        work = tempfile.mkdtemp(prefix="sbx-pasta-")
        args += ["--pid", os.path.join(work, "pid"), "--netns", f"/proc/{target}/ns/net",
                 "--userns", f"/proc/{target}/ns/user"]
        setpriv = tools.find("setpriv")
        try:
            if setpriv is None:
                raise SetupError("--net pasta: setpriv not found (install package util-linux)")
            log = os.open(os.path.join(work, "log"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                pid = os.posix_spawn(setpriv, [setpriv, "--pdeathsig", "KILL", "--", "pasta", *args], os.environ,
                                     file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                                   (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)],
                                     setsigdef=(signal.SIGPIPE,))
            finally:
                os.close(log)
        except BaseException:
            _remove(work)
            raise
        return cls(pid, work)

    def ready(self) -> bool:
        """Whether pasta has set up the box's interface (it writes its pid file then); a SetupError with its own
        words if it ended instead."""
        if self._ready:
            return True
        if os.waitpid(self.pid, os.WNOHANG) != (0, 0):
            said = _read(os.path.join(self._work, "log")).strip().splitlines()
            self.pid = 0
            raise SetupError(f"pasta: {said[-1] if said else 'it exited during setup'}")
        if _read(os.path.join(self._work, "pid")).strip():
            self._ready = True
            _remove(self._work)
        return self._ready

    def stop(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)  # (our child until collected: the pid is still its)
            os.waitpid(self.pid, 0)
            self.pid = 0
        _remove(self._work)


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read(4096)
    except OSError:
        return ""


def _remove(work: str) -> None:
    for name in ("pid", "log"):
        try:
            os.unlink(os.path.join(work, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(work)
    except FileNotFoundError:
        pass
