"""A box's way out under `--net pasta` or `--net slirp4netns`: a user-mode network stack on the host, the ones
rootless podman uses, gives the box's network namespace outbound TCP and UDP and DNS, with no privilege.

The stack's process runs as the caller, outside the box, and joins the
box's user and network namespaces (the outer process's, starter.c) only to
make and set up the box's interface (pasta.py, slirp.py).  What a box must
not get unless asked is turned off in both: the host's loopback (with
`--host-loopback`, the box reaches the host's 127.0.0.1 at the stack's
gateway address, named `host.containers.internal` as podman does), and any
port of the box on the host but those `--publish` names (on 127.0.0.1
unless an address is given).

Each is started through `setpriv --pdeathsig KILL`: it dies with the thread
that started it, so it never outlives the supervisor, and the box's close
ends it first.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Protocol

from .. import tools
from ..errors import ConfigError, SetupError
from ..record import Record

STACKS = ("pasta", "slirp4netns")
HOST_NAME = "host.containers.internal"
READY_TIMEOUT = 10.0
_PACKAGES = {"pasta": "passt", "slirp4netns": "slirp4netns"}
_PUBLISH = re.compile(r"(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+):(?P<box>\d+)(?:/(?P<proto>tcp|udp))?")


class Publish(Record):
    """A box port on a host address and port (`-p [IP:]HOSTPORT:BOXPORT[/tcp|udp]`)."""

    ip: str
    host_port: int
    box_port: int
    proto: str = "tcp"


class Network(Record):
    """What the stack gives a box: its name server, the address at which the box reaches the host's loopback
    (None: out of reach), and the published ports."""

    stack: str
    dns: str
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


def network(stack: str, host_loopback: bool, publish: tuple[Publish, ...]) -> Network:
    """The network a box gets under `--net STACK`, checked before anything starts: the stack is installed, and
    for pasta with `host_loopback`, the host has a default IPv4 gateway (pasta gives the box the host's)."""
    if tools.find(stack) is None:
        other = next(s for s in STACKS if s != stack)
        instead = f", or use --net {other}" if tools.find(other) is not None else ""
        raise ConfigError(f"--net {stack}: {stack} not found (install package {_PACKAGES[stack]}{instead})")
    if stack == "slirp4netns":
        from .slirp import DNS, HOST
        return Network(stack, DNS, HOST if host_loopback else None, publish)
    from .pasta import DNS
    gateway = _default_gateway() if host_loopback else None
    if host_loopback and gateway is None:
        raise ConfigError("--host-loopback: the host has no default IPv4 route, whose gateway the box would use")
    return Network(stack, DNS, gateway, publish)


class Stack(Protocol):
    """A box's running stack: `ready` once the box's interface is up (a SetupError if it ended instead)."""

    def ready(self) -> bool: ...

    def stop(self) -> None: ...


def start(target: int, net: Network) -> Stack:
    """Start the stack of the box whose outer process is `target` (from the thread that will outlive the box)."""
    if net.stack == "slirp4netns":
        from .slirp import Slirp
        return Slirp.spawn(target, net)
    from .pasta import Pasta
    return Pasta.spawn(target, net)


def wait_ready(stack: Stack, what: str) -> None:
    """Wait (blocking) until `stack` is ready: a SetupError if it ends, or is not ready in READY_TIMEOUT."""
    import time

    deadline = time.monotonic() + READY_TIMEOUT
    while not stack.ready():
        if time.monotonic() > deadline:
            raise SetupError(f"{what} was not up after {READY_TIMEOUT:.0f} s")
        time.sleep(0.002)


def spawn(tool: str, args: list[str], work: str, keep: tuple[int, ...] = ()) -> int:
    """`tool ARGS` through `setpriv --pdeathsig KILL`, its output to `work`/log, SIGPIPE back to its default (a
    Python process ignores it, and pasta refuses to start so), the fds `keep` inherited at their numbers."""
    setpriv = tools.find("setpriv")
    if setpriv is None:
        raise SetupError(f"--net {tool}: setpriv not found (install package util-linux)")
    log = os.open(os.path.join(work, "log"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for fd in keep:
            os.set_inheritable(fd, True)
        return os.posix_spawn(setpriv, [setpriv, "--pdeathsig", "KILL", "--", tool, *args], os.environ,
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                            (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)],
                              setsigdef=(signal.SIGPIPE,))
    finally:
        os.close(log)
        for fd in keep:
            os.set_inheritable(fd, False)


def ended(tool: str, pid: int, work: str) -> None:
    """A SetupError with the tool's last words if it has exited."""
    if os.waitpid(pid, os.WNOHANG) != (0, 0):
        said = read(os.path.join(work, "log")).strip().splitlines()
        raise SetupError(f"{tool}: {said[-1] if said else 'it exited during setup'}")


def kill(pid: int) -> None:
    if pid:
        os.kill(pid, signal.SIGKILL)  # (our child until collected: the pid is still its)
        os.waitpid(pid, 0)


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


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read(4096)
    except OSError:
        return ""


def remove(work: str) -> None:
    """The stack's scratch dir, and what it keeps there."""
    for name in ("pid", "log", "api.sock"):
        try:
            os.unlink(os.path.join(work, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(work)
    except FileNotFoundError:
        pass
