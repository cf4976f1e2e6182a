"""What a running box uses so far, for `sbx ps`: CPU seconds and memory bytes of all its processes.

From the box's cgroup where it has one (every process, the ended ones' CPU too).  Else from its live processes
in /proc: those of the box's pid namespace and of the namespaces nested in it (what `sbx exec` runs), found
from the host's side by walking each process's pid namespace up (NS_GET_PARENT) to the box's.
"""

from __future__ import annotations

import fcntl
import os

_NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2)
_MAX_NESTING = 32  # the kernel's own bound on pid namespace nesting


def sample(cgroup: str | None, box_pid: int) -> tuple[float, int]:
    if cgroup is not None:
        try:
            with open(os.path.join(cgroup, "cpu.stat")) as f:
                usec = next(int(line.split()[1]) for line in f if line.startswith("usage_usec"))
            with open(os.path.join(cgroup, "memory.current")) as f:
                return usec / 1e6, int(f.read())
        except (OSError, StopIteration, ValueError):
            pass
    try:
        box_ns = os.stat(f"/proc/{box_pid}/ns/pid_for_children")
    except OSError:
        return 0.0, 0
    cpu, memory = 0.0, 0
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not _within(f"/proc/{pid}/ns/pid", (box_ns.st_dev, box_ns.st_ino)):
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/statm") as f:
                memory += int(f.read().split()[1]) * page
            cpu += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return cpu, memory


def _within(ns_path: str, box_ns: tuple[int, int]) -> bool:
    """Whether the pid namespace at `ns_path` is the box's or nested in it."""
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for _ in range(_MAX_NESTING):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == box_ns:
                return True
            try:
                parent = fcntl.ioctl(fd, _NS_GET_PARENT)
            except OSError:  # the host's (or one this process cannot see above): not the box's
                return False
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)
