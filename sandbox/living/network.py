"""Networks of boxes: `sbx network create [--net pasta|slirp4netns] NAME|ls|rm`, and `sbx run --network NAME`.

A network is a user and a network namespace held by a small process of its own (its holder: it maps the ids
as a box's are, brings the loopback up, and then only sleeps).  A box on the network enters both instead of
making its own (starter.c): the boxes on one network share its loopback, as the containers of a pod do, and
know each other by name through the network's hosts file, bound read-only at /etc/hosts in each, where every
detached box's name is 127.0.0.1.  Two boxes on one network cannot listen on the same port.

Nothing else is reachable unless the network was made with a way out (`--net pasta` or `slirp4netns`, with
`--host-loopback` and `--publish` as for one box: box/netstack.py): then the stack's interface is the
namespace's, for all its boxes, and the network's resolv.conf, bound at /etc/resolv.conf in each, names the
stack's name server.

The holder is the child of a keeper that stays outside the namespaces (a stack must be started from outside):
the keeper starts the stack, then waits for the holder.  Each dies with the other (parent-death signals, and
the keeper kills the stack and ends when the holder does), so no stack outlives its network.

Under `$XDG_RUNTIME_DIR/sbx/networks/NAME/`: state.json (the keeper's and the holder's pids, the id mapping),
hosts, resolv.conf (with a way out), and lock, which the keeper (and the holder) hold for their whole life.  A
holder that is killed leaves its boxes their namespaces (the kernel keeps them while they are used); no new
box can join.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import struct
import sys
from typing import Any

from .. import syscalls as sc
from .. import teardown
from ..box import netstack
from ..errors import ConfigError, SetupError
from ..record import Record
from . import state

CLONE_NEWNET = 0x40000000
_SIOCSIFFLAGS = 0x8914
_IFF_UP, _IFF_RUNNING = 0x1, 0x40
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"


class Network(Record):
    name: str
    path: str
    holder: int
    idmap: str
    way_out: str | None = None
    """The stack that gives the network's boxes a way out (pasta or slirp4netns), if any."""


def root() -> str:
    path = os.path.join(os.path.dirname(state.root()), "networks")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def get(name: str) -> Network:
    """The network, if its holder lives."""
    path = os.path.join(root(), state.check_name(name))
    data = state.read_json(path, "state.json") if os.path.isdir(path) else None
    if data is None:
        raise ConfigError(f"network {name}: no such network (sbx network ls lists them)")
    if not state.alive(path):
        raise ConfigError(f"network {name}: its holder is gone (sbx network rm {name}, then create it again)")
    return Network(name, path, int(data["holder"]), str(data["idmap"]), data.get("way_out"))


def names() -> list[str]:
    return sorted(n for n in os.listdir(root()) if os.path.isdir(os.path.join(root(), n)))


def create(name: str, idmap: str, stack: str | None = None, host_loopback: bool = False,
           publish: tuple[str, ...] = ()) -> Network:
    """Start the network's keeper and holder, and wait until it is ready (or say why it is not).  `stack`: its way
    out, with `host_loopback` and `publish` as `sbx run --net` takes them."""
    from ..box.starter import write_id_maps
    from ..box.userns import detect

    ids = detect(idmap)  # type: ignore[arg-type]
    if (host_loopback or publish) and stack is None:
        raise ConfigError(f"--{'host-loopback' if host_loopback else 'publish'} needs --net pasta or slirp4netns")
    way_out = _way_out(stack, host_loopback, publish) if stack is not None else None
    path = os.path.join(root(), state.check_name(name))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise ConfigError(f"network {name}: it exists") from None
    try:
        hosts = HOSTS
        if way_out is not None:
            if way_out.host_gateway is not None:
                hosts += f"{way_out.host_gateway}\t{netstack.HOST_NAME}\n"
            with open(os.path.join(path, "resolv.conf"), "w") as f:
                f.write(f"nameserver {way_out.dns}\n")
        with open(os.path.join(path, "hosts"), "w") as f:
            f.write(hosts)
        to_holder, from_cli = os.pipe2(os.O_CLOEXEC)
        said_r, said_w = os.pipe2(os.O_CLOEXEC)
        os.posix_spawn(sys.executable, [sys.executable, "-m", "sandbox.living.network", path, ids.mode,
                                        stack or "", str(int(host_loopback)), *publish],
                       dict(os.environ), setsid=True,
                       file_actions=[(os.POSIX_SPAWN_DUP2, to_holder, 0), (os.POSIX_SPAWN_DUP2, said_w, 1),
                                     (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
        os.close(to_holder)
        os.close(said_w)
        with os.fdopen(said_r, "r") as said, os.fdopen(from_cli, "w") as tell:
            first = said.readline().strip()  # "unshared PID", or why not (through the keeper)
            if not first.startswith("unshared "):
                raise ConfigError(f"network {name}: {first.removeprefix('error: ') or 'its holder did not start'}")
            if ids.mode == "range":
                write_id_maps(ids, int(first.split()[1]))
            tell.write("mapped\n")
            tell.flush()
            answer = said.readline().strip()
        if answer != "ready":
            raise ConfigError(f"network {name}: {answer.removeprefix('error: ') or 'its holder ended'}")
        return get(name)
    except BaseException:
        teardown.remove_tree(path)
        raise


def remove(name: str) -> None:
    path = os.path.join(root(), state.check_name(name))
    if not os.path.isdir(path):
        raise ConfigError(f"network {name}: no such network (sbx network ls lists them)")
    if state.alive(path):
        data = state.read_json(path, "state.json")
        for pid in (data["keeper"], data["holder"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    left = teardown.remove_tree(path)
    if left:
        raise ConfigError(f"network {name}: could not remove all of it: {'; '.join(left)}")


def add_name(network: Network, name: str) -> None:
    """`name` at 127.0.0.1 in the network's hosts file, rewritten in place: every box's bind of it sees it."""
    _edit_hosts(network.path, lambda lines: [*[x for x in lines if x.split()[1:] != [name]], f"127.0.0.1\t{name}"])


def drop_name(network: str, name: str) -> None:
    """`name` out of the hosts file of the network `network`, if there is such a network (still)."""
    try:
        path = os.path.join(root(), state.check_name(network))
    except ConfigError:  # (a box being refused for its network's name: there is nothing to undo)
        return
    if os.path.isdir(path):
        _edit_hosts(path, lambda lines: [x for x in lines if x.split()[1:] != [name]])


def _edit_hosts(path: str, change: Any) -> None:
    fd = os.open(os.path.join(path, "hosts"), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lines = os.read(fd, 1 << 20).decode().splitlines()
        text = "\n".join(change(lines)) + "\n"
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _way_out(stack: str, host_loopback: bool, publish: tuple[str, ...]) -> netstack.Network:
    if stack not in netstack.STACKS:
        raise ConfigError(f"--net: unknown way out {stack!r} (expected {' or '.join(netstack.STACKS)})")
    return netstack.network(stack, host_loopback, tuple(map(netstack.parse_publish, publish)))


def _keep(path: str, mode: str, stack: str, host_loopback: str, *publish: str) -> int:
    """The keeper: start the holder, then the way out, say "ready" (or why not), and wait for the holder."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    state.hold(path)  # (held until both are gone)
    said = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    up_r, up_w = os.pipe()
    holder = os.fork()
    if holder == 0:
        os.close(up_r)
        os._exit(_hold(mode, said, os.fdopen(up_w, "w"), null))
    os.close(up_w)
    os.dup2(null, 0)
    with os.fdopen(up_r) as up:
        answer = up.readline().strip()
    way_out = None
    try:
        if answer != "ready":
            raise SetupError(answer.removeprefix("error: ") or "its holder ended")
        if stack:
            way_out = netstack.start(holder, _way_out(stack, host_loopback == "1", publish))
            netstack.wait_ready(way_out, f"{stack}: the network's way out")
        state.write_json(path, "state.json", {"keeper": os.getpid(), "holder": holder, "idmap": mode,
                                              "way_out": stack or None})
    except (SetupError, ConfigError) as e:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        if way_out is not None:
            way_out.stop()
        said.write(f"error: {e}\n")
        return 1
    said.write("ready\n")
    said.close()
    os.waitpid(holder, 0)
    if way_out is not None:
        way_out.stop()
    return 0


def _hold(mode: str, said: Any, up: Any, null: int) -> int:
    """The holder: unshare, be mapped (by the command line, with newuidmap) or map itself, bring the loopback up,
    tell the keeper, and sleep holding the namespaces; returns only if it could not."""
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        return 1
    uid, gid = os.getuid(), os.getgid()
    try:
        sc.unshare(sc.CLONE_NEWUSER)
        if mode == "single":
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1\n"), ("gid_map", f"{gid} {gid} 1\n")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        said.write(f"unshared {os.getpid()}\n")
        said.flush()
        said.close()
        if mode == "range" and sys.stdin.readline().strip() != "mapped":
            return 1
        sc.unshare(CLONE_NEWNET)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", _IFF_UP | _IFF_RUNNING))
        up.write("ready\n")
        up.close()
    except OSError as e:
        up.write(f"error: {e.strerror or e}\n")
        return 1
    os.dup2(null, 0)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(_keep(*sys.argv[1:]))
