"""The spawner alone: one run request to `spawner.c` and its report, against a bare posix_spawn, same run.

This isolates what the C spawner adds (its fork or vfork, privilege drop,
rlimits, reaping) from the Python layers above it.  The spawner ends each
run with kill(-1), so run this only in a pid namespace of its own:

    unshare --user --map-root-user --pid --fork --mount-proc python bench/spawner_bench.py [N]
"""

from __future__ import annotations

import array
import os
import socket
import statistics
import sys
import time

from sandbox.spawner import spawner_binary


def main(n: int) -> None:
    if os.getpid() != 1:
        sys.exit("spawner_bench: run me as pid 1 of a new pid namespace (see the docstring): the spawner kills -1")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    binary = spawner_binary()
    pid = os.fork()
    if pid == 0:
        os.dup2(theirs.fileno(), 3)
        os.execv(binary, ["sbx-spawner", "3", str(os.getuid()), str(os.getgid()), "0"])
    null = os.open("/dev/null", os.O_RDWR)
    # box.py's _run_tokens: no filter, cgroup or tracing, no limits, no capture, no rlimits, argv and env of one,
    # cwd, no CPU set, three fds
    request = b"\0".join([b"run", b"0", b"0", b"0", b"0", b"0", b"0", b"0", b"0", b"0", b"1", b"1", b"/", b"", b"3",
                           b"/bin/true", b"PATH=/usr/bin:/bin"]) + b"\0"
    fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [null] * 3).tobytes())]
    spawner, bare = [], []
    for _ in range(n):
        t = time.perf_counter()
        ours.sendmsg([request], fds)
        assert b"wait_status" in ours.recv(4096)
        spawner.append(time.perf_counter() - t)
        t = time.perf_counter()
        os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)
        bare.append(time.perf_counter() - t)
    s, b = statistics.median(spawner), statistics.median(bare)
    print(f"| spawner request to report, /bin/true | {s * 1e3:.3f} ms | {s / b:.2f}x |")
    print(f"| bare posix_spawn+waitpid /bin/true | {b * 1e3:.3f} ms | 1.00x |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
