"""Benchmark sbx-overlayfs against kernel overlayfs and fuse-overlayfs, lower=/usr.

Workloads, each on a fresh mount (cold: daemon caches empty, host page
cache already warm for everyone) and again on the same mount (warm):

  a) ``tar cf - MNT/include | wc -c`` then ``find MNT/lib -type f | wc -l``
  b) gcc compiling a small C program, with the merged tree bind-mounted
     over /usr in a private mount namespace, so gcc, cc1, as, ld, the
     headers and libc all come through the union.

Everything runs in one user+mount namespace (the script re-executes itself
under ``unshare -Urm``), which is how the sandbox uses these filesystems
and the only way an unprivileged user can mount kernel overlayfs.

Usage: VENV/bin/python bench/overlay_bench.py [--repeat N]   (the installed sbx-overlayfs, with its libfuse shim)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LOWER = "/usr"
HELLO = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) { printf("hello %d %s\n", argc, strdup(argv[0])); return 0; }
"""


def sh(cmd: str) -> None:
    subprocess.run(["sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL)


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wait_mounted(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(path) and os.listdir(path):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{path} did not get mounted")


class Impl:
    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.base = base / name.split()[0]
        self.mnt = self.base / "mnt"
        self.proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        if self.base.exists():
            shutil.rmtree(self.base)
        for d in ("upper", "work", "mnt"):
            (self.base / d).mkdir(parents=True)
        up, wk = self.base / "upper", self.base / "work"
        opts = f"lowerdir={LOWER},upperdir={up},workdir={wk}"
        if self.name == "kernel overlayfs":
            sh(f"mount -t overlay overlay -o {opts},userxattr {self.mnt}")
            return
        if self.name == "fuse-overlayfs":
            cmd = ["/usr/bin/fuse-overlayfs", "-f", "-o", opts, str(self.mnt)]
        else:  # the installed daemon, as users run it (a source tree has no libfuse shim: see _installed_shim)
            cmd = [sys.executable, "-m", "fuse_overlay.cli", "-f", "-o", opts, str(self.mnt)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        wait_mounted(self.mnt)

    def umount(self) -> None:
        subprocess.run(["umount", str(self.mnt)], check=True)
        if self.proc is not None:
            self.proc.wait(timeout=20)
            self.proc = None

    def walk(self) -> None:
        sh(f"tar cf - {self.mnt}/include 2>/dev/null | wc -c; find {self.mnt}/lib -type f | wc -l")

    def gcc(self, src: Path, out: Path) -> None:
        sh(f"unshare -m sh -c 'mount --bind {self.mnt} /usr && gcc -O2 -o {out} {src}'")


def _installed_shim() -> None:
    """sbx-overlayfs from the installed wheel, with its libfuse shim: without it (a source tree, where setup.py has
    not built it) the daemon still serves, every open and getattr through Python, and measures some 1.3x slower
    cold (bench/README.md, 2026-12-07)."""
    spec = importlib.util.find_spec("fuse_overlay")
    if spec is None or spec.origin is None:
        raise SystemExit("overlay_bench: fuse_overlay is not installed: run it with the python of a venv sbx is in")
    shim = Path(spec.origin).parent / "_bin" / "sbx-fuse-shim.so"
    if not shim.exists():
        raise SystemExit(f"overlay_bench: {shim} is missing: run it with an installed wheel's python, not a source "
                         "tree's")


def run(repeat: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="sbx-bench-"))
    src = base / "hello.c"
    src.write_text(HELLO)
    names = ["kernel overlayfs", "fuse-overlayfs", "sbx-overlayfs"]
    results: dict[str, dict[str, float]] = {n: {} for n in names}
    # Same host page cache for everyone: read the lower once before timing.
    sh(f"tar cf - {LOWER}/include 2>/dev/null | wc -c; find {LOWER}/lib -type f | wc -l")
    for _ in range(repeat):
        for name in names:
            impl = Impl(name, base)
            r = results[name]
            for workload, fn in (("walk", impl.walk), ("gcc", lambda i=impl: i.gcc(src, base / "hello"))):
                impl.mount()
                cold = timed(fn)
                warm = timed(fn)
                impl.umount()
                for key, val in ((f"{workload} cold", cold), (f"{workload} warm", warm)):
                    r[key] = min(r.get(key, float("inf")), val)
    shutil.rmtree(base, ignore_errors=True)
    cols = ["walk cold", "walk warm", "gcc cold", "gcc warm"]
    kern = results["kernel overlayfs"]
    fo = results["fuse-overlayfs"]
    print(f"lower={LOWER}; best of {repeat}; walk = tar /usr/include + find /usr/lib -type f\n")
    print("| implementation | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name in names:
        cells = []
        for c in cols:
            v = results[name][c]
            unit = f"{v * 1000:.0f} ms" if c.startswith("gcc") else f"{v:.2f} s"
            ratio = f" ({v / kern[c]:.2f}x kernel" + (f", {v / fo[c]:.2f}x f-o)" if name == "sbx-overlayfs" else ")")
            cells.append(unit + ("" if name == "kernel overlayfs" else ratio))
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    _installed_shim()
    if os.environ.get("SBX_BENCH_INNER") != "1":
        env = dict(os.environ, SBX_BENCH_INNER="1")
        sys.exit(subprocess.run(["unshare", "-Urm", sys.executable, __file__, "--repeat", str(args.repeat)],
                                env=env).returncode)
    run(args.repeat)


if __name__ == "__main__":
    main()
