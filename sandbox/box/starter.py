"""Starting the starter (starter.c) for one box, and writing its id map: blocking, for either kind of caller.

The API's `Box` (supervisor.py) calls these from its event loop (the map in
a worker thread); `sbx run`'s one-shot path (oneshot.py) calls them as they are.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from ..errors import SetupError
from .userns import IdMap

_LOW_FDS = 100
"""The fds handed to the starter are moved this high first, clear of the fds 3-7 they are duplicated onto."""


def spawn_starter(starter: str, spawner: str, ids: IdMap, fds: list[int], cgroup_fd: int, enter: str = "") -> int:
    """Spawn the starter (starter.c) for one box: `fds` are its control socket, the "unshared" pipe's write end
    and the "mapped" pipe's read end (fds 3, 5 and 6 there), the spawner's binary fd 4, `cgroup_fd` (if >= 0) 7.
    `enter`: "exec:PID", the outer process of a running box to enter (sbx exec) instead of making one; or
    "net:PID", the holder of a network whose user and network namespaces the box shares.

    posix_spawn rather than a fork: nothing of this process's memory goes
    with it.  stdin, stdout and stderr are /dev/null: the caller's terminal
    or pipes are no box's.  The starter closes whatever else the caller left
    inheritable before it does anything.
    """
    sources = [*fds, *([cgroup_fd] if cgroup_fd >= 0 else [])]
    high: list[int] = []
    try:
        for fd in sources:
            high.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _LOW_FDS))
        targets = (3, 5, 6, 7)
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in zip(high, targets)]
        actions += [(os.POSIX_SPAWN_OPEN, 4, spawner, os.O_PATH, 0),
                    *((os.POSIX_SPAWN_OPEN, i, os.devnull, os.O_RDWR, 0) for i in (0, 1, 2))]
        return os.posix_spawn(starter, [starter, str(os.getpid()), ids.mode, str(ids.outer_uid), str(ids.outer_gid),
                                        str(ids.program_uid), str(ids.program_gid), str(int(cgroup_fd >= 0)),
                                        *([enter] if enter else [])], {},
                              file_actions=actions, setsigmask=())
    finally:
        for fd in high:
            os.close(fd)


def write_id_maps(ids: IdMap, pid: int) -> None:
    """The range mapping of the starter `pid`'s new user namespace, once it has unshared it: by newuidmap and
    newgidmap (they check /etc/subuid), or by root itself for its private range."""
    if ids.private:  # root writes the maps itself; newuidmap would check /etc/subuid
        for name, args in (("uid_map", ids.uid_map_args()), ("gid_map", ids.gid_map_args())):
            lines = "".join(" ".join(args[i:i + 3]) + "\n" for i in range(0, len(args), 3))
            try:
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(lines)
            except OSError as e:  # e.g. "root" of a user namespace that lacks those host ids
                raise SetupError(f"cannot map root's private range of ids ({name}: {e.strerror}); give root "
                                 "a range in /etc/subuid and /etc/subgid, or use --idmap single") from None
        return
    started: list[tuple[str, int, int]] = []
    try:  # both at once: each is a setuid program's exec, some 1 ms of every start
        for tool, args in (("newuidmap", ids.uid_map_args()), ("newgidmap", ids.gid_map_args())):
            started.append((tool, *_spawn_tool([tool, str(pid), *args])))
    finally:
        ended = [(tool, *_reap_tool(child, stderr)) for tool, child, stderr in started]
    for tool, status, said in ended:
        if status != 0:
            detail = said.decode(errors="replace").strip().splitlines()
            raise SetupError(f"{tool}: {detail[-1] if detail else f'exit status {status}'}")


def _spawn_tool(argv: list[str]) -> tuple[int, int]:
    """Start `argv` (found on PATH) with stdin and stdout on /dev/null: its pid and the read end of its stderr.

    posix_spawn rather than subprocess, whose import (and threading's) a
    one-shot `sbx run` would pay on every start for this one call.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 2)])
    except OSError as e:
        os.close(read_end)
        raise SetupError(f"{argv[0]}: {e.strerror}") from None
    finally:
        os.close(write_end)
    return pid, read_end


def _reap_tool(pid: int, stderr: int) -> tuple[int, bytes]:
    """What `_spawn_tool`'s program said on stderr, and its exit status, once it ended."""
    with os.fdopen(stderr, "rb") as f:
        said = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), said
