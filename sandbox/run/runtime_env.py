"""Environment that lets language runtimes live within a run's memory limit.

The JVM sizes its heap from a cgroup's limit by itself, but without one it
reserves a quarter of the machine's memory plus 1.2 GiB of class and code
space, more than the address-space backstop allows (fallback.py).  The Go
runtime reads no limit at all: GOMEMLIMIT makes its collector work harder near
it instead of letting the heap double.  The caller's own settings win: the
sandbox merges these under them.
"""

from __future__ import annotations

MiB = 2**20


def runtime_env(memory: int | None, cgroup: bool) -> dict[str, str]:
    if memory is None:
        return {}
    env = {"GOMEMLIMIT": f"{memory * 9 // 10 // MiB}MiB"}
    if not cgroup:
        heap = max(memory // 2, memory - 128 * MiB) // MiB
        reserve = max(16, memory // MiB // 8)
        env["JAVA_TOOL_OPTIONS"] = (f"-Xmx{heap}m -XX:ReservedCodeCacheSize={reserve}m "
                                    f"-XX:CompressedClassSpaceSize={reserve}m -XX:MaxMetaspaceSize={2 * reserve}m "
                                    "-XX:+UseSerialGC")
    return env
