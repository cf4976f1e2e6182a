"""How long a box with the FUSE union takes, open + one run + close, in one process: the first, then the rest.

The first pays for the daemons' fork server (a fresh interpreter); every
later box's daemon is a fork of it.  Run it with two installs in turn to
compare them, as the unprivileged user:

    python bench/fuse_start_bench.py [N]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from sandbox import Bind, Sandbox


async def once(low: Path) -> float:
    t = time.perf_counter()
    async with Sandbox(lowers=[str(low)], binds=[Bind("/usr", "/usr", False)], fs="fuse") as box:
        r = await box.run(["cat", "/etc/motd"])
    assert r.stdout == b"hi\n", r
    return time.perf_counter() - t


async def boxes(low: Path, n: int) -> list[float]:
    return [await once(low) for _ in range(n)]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    base = Path(tempfile.mkdtemp(prefix="sbx-fuse-bench-"))
    try:
        low = base / "low"
        (low / "usr").mkdir(parents=True)
        (low / "etc").mkdir()
        (low / "etc" / "motd").write_text("hi\n")
        for link in ("bin", "lib", "lib64", "sbin"):
            (low / link).symlink_to(f"usr/{link}")
        samples = anyio.run(boxes, low, n)
    finally:
        shutil.rmtree(base)
    print(f"first {samples[0] * 1000:.0f} ms, then median {statistics.median(samples[1:]) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
