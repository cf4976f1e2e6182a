"""How `Limits` become setrlimit calls in the program's process.

Computed by the supervisor and applied verbatim by the child, so the spawner
holds no policy.  Each rlimit is either the limit itself or a backstop for a
limit that is really enforced elsewhere (CPU time and, without a cgroup,
memory by the spawner).
"""

from __future__ import annotations

import math
import resource

from ..box.userns import IdMap
from .fallback import address_space
from .limits import Limits

Rlimit = tuple[int, int, int]


def rlimits(limits: Limits, ids: IdMap, cgroup: bool) -> list[Rlimit]:
    """With a run cgroup, memory and pids are its limits: no address-space cap to break the JVM, Go or V8."""
    out: list[Rlimit] = [(resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files)]
    if limits.cpu_time is not None:
        # The spawner kills within a millisecond of the limit; this only catches a spawner that failed.
        soft = math.ceil(limits.cpu_time) + 1
        out.append((resource.RLIMIT_CPU, soft, soft + 1))
    caps = [limits.address_space] if limits.address_space is not None else []
    if limits.memory is not None and not cgroup:
        caps.append(address_space(limits.memory))
    if caps:
        out.append((resource.RLIMIT_AS, min(caps), min(caps)))
    if limits.data is not None:
        out.append((resource.RLIMIT_DATA, limits.data, limits.data))
    if limits.pids is not None and not cgroup:
        # Counted per (user namespace, uid) since Linux 5.14, so per box.  In single mode box init and
        # the spawner share the program's uid.
        n = limits.pids + (2 if ids.init_shares_program_uid else 0)
        out.append((resource.RLIMIT_NPROC, n, n))
    if limits.file_size is not None:
        out.append((resource.RLIMIT_FSIZE, limits.file_size, limits.file_size))
    if limits.stack is not None:
        out.append((resource.RLIMIT_STACK, limits.stack, limits.stack))
    return out
