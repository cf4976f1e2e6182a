"""Networks of boxes: `sbx network create|ls|rm`, and `sbx run --network NAME`.

A network is a user and a network namespace held by a small process of its own (its holder: it maps the ids
as a box's are, brings the loopback up, and then only sleeps).  A box on the network enters both instead of
making its own (starter.c): the boxes on one network share its loopback, as the containers of a pod do, and
know each other by name through the network's hosts file, bound read-only at /etc/hosts in each, where every
detached box's name is 127.0.0.1.  Nothing else is reachable: the namespace has no other interface.  Two
boxes on one network cannot listen on the same port.

Under `$XDG_RUNTIME_DIR/sbx/networks/NAME/`: state.json (the holder's pid and id mapping), hosts, and lock,
which the holder holds for its whole life.  A holder that is killed leaves its boxes their namespaces (the
kernel keeps them while they are used); no new box can join.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import sys
from typing import Any

from .. import syscalls as sc
from .. import teardown
from ..errors import ConfigError
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
    return Network(name, path, int(data["holder"]), str(data["idmap"]))


def names() -> list[str]:
    return sorted(n for n in os.listdir(root()) if os.path.isdir(os.path.join(root(), n)))


def create(name: str, idmap: str) -> Network:
    """Start the network's holder, and wait until it is ready (or say why it is not)."""
    from ..box.starter import write_id_maps
    from ..box.userns import detect

    ids = detect(idmap)  # type: ignore[arg-type]
    path = os.path.join(root(), state.check_name(name))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise ConfigError(f"network {name}: it exists") from None
    try:
        with open(os.path.join(path, "hosts"), "w") as f:
            f.write(HOSTS)
        to_holder, from_cli = os.pipe2(os.O_CLOEXEC)
        said_r, said_w = os.pipe2(os.O_CLOEXEC)
        pid = os.posix_spawn(sys.executable, [sys.executable, "-m", "sandbox.living.network", path, ids.mode],
                             dict(os.environ), setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, to_holder, 0), (os.POSIX_SPAWN_DUP2, said_w, 1),
                                           (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
        os.close(to_holder)
        os.close(said_w)
        with os.fdopen(said_r, "r") as said, os.fdopen(from_cli, "w") as tell:
            if said.readline().strip() != "unshared":
                raise ConfigError(f"network {name}: its holder did not start")
            if ids.mode == "range":
                write_id_maps(ids, pid)
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
        os.kill(int(state.read_json(path, "state.json")["holder"]), signal.SIGKILL)
    left = teardown.remove_tree(path)
    if left:
        raise ConfigError(f"network {name}: could not remove all of it: {'; '.join(left)}")


def add_name(network: Network, name: str) -> None:
    """`name` at 127.0.0.1 in the network's hosts file, rewritten in place: every box's bind of it sees it."""
    _edit_hosts(network.path, lambda lines: [*[x for x in lines if x.split()[1:] != [name]], f"127.0.0.1\t{name}"])


def drop_name(network_path: str, name: str) -> None:
    _edit_hosts(network_path, lambda lines: [x for x in lines if x.split()[1:] != [name]])


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


def _hold(path: str, mode: str) -> int:
    """The holder: unshare, be mapped (by the command line, with newuidmap) or map itself, bring the loopback up,
    and sleep holding the namespaces and the lock; returns only if it could not."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    state.hold(path)  # (held until the holder is killed)
    said = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    uid, gid = os.getuid(), os.getgid()
    try:
        sc.unshare(sc.CLONE_NEWUSER)
        if mode == "single":
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1\n"), ("gid_map", f"{gid} {gid} 1\n")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        said.write("unshared\n")
        said.flush()
        if mode == "range" and sys.stdin.readline().strip() != "mapped":
            return 1
        sc.unshare(CLONE_NEWNET)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", _IFF_UP | _IFF_RUNNING))
        state.write_json(path, "state.json", {"holder": os.getpid(), "idmap": mode})
        said.write("ready\n")
        said.close()
    except OSError as e:
        said.write(f"error: {e.strerror or e}\n")
        return 1
    os.dup2(null, 0)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(_hold(sys.argv[1], sys.argv[2]))
