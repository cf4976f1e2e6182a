"""The Python cost of a cold FUSE walk's listings, without FUSE: every directory under a lower listed once.

A cold walk sends sbx-overlayfs one readdirplus per directory that reaches
Python (the rest is answered in C, shim.c): each lists the directory,
resolves every entry (an lstat, its owner override, a node) and registers
its attributes with the shim.  This runs that handler in-process over a
tree, with pyfuse3's reply replaced by a no-op, so that the daemon's Python
can be measured and profiled apart from the kernel's round trips.  The
collector is set as the daemon sets it (mount.py).

    python bench/listing_bench.py /usr 3       # as the user the daemon runs as; seconds per full listing
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time

import trio

from fuse_overlay import operations
from fuse_overlay.inodes import Node
from fuse_overlay.libfuse import FUSEError
from fuse_overlay.mount import YOUNG_OBJECTS
from fuse_overlay.operations import UnionFS

operations.pyfuse3.readdir_reply = lambda token, name, attr, cookie: True


def list_all(fs: UnionFS) -> int:
    """List every directory once, as the kernel would on a walk; the number of entries."""
    entries = 0

    async def walk() -> None:
        nonlocal entries
        todo: list[Node] = [fs.union.root]
        while todo:
            d = todo.pop()
            try:
                await fs.readdir(d.ino, 0, None)  # type: ignore[arg-type]
            except FUSEError:
                continue  # a directory this user may not read
            for _, node in fs.union.listing(d):
                entries += 1
                if node.is_dir:
                    todo.append(node)

    trio.run(walk)
    return entries


def main() -> None:
    lower, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as scratch:
            os.mkdir(f"{scratch}/upper")
            os.mkdir(f"{scratch}/work")
            fs = UnionFS([lower], f"{scratch}/upper", f"{scratch}/work")
            start = time.perf_counter()
            entries = list_all(fs)
            print(f"{entries} entries listed in {time.perf_counter() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
