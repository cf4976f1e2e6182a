"""Detached boxes against podman's containers: `run -d`, `exec`, `stop`, `rm`, on the same image, interleaved.

    python bench/living_bench.py ROOTFS_TAR [N]     # as an unprivileged user, from /tmp

ROOTFS_TAR: e.g. `mmdebstrap --mode=unshare --variant=minbase bookworm debian.tar`.  It is imported into sbx's
store and, exported from there, loaded into a podman store of the bench's own (overlay driver, the kernel's
rootless overlayfs; Debian 12's podman 4.3 with runc and conmon).  Each round, for each tool in turn (the order
alternating): start `sleep infinity` detached, exec `true` in it, stop it with no grace, remove it.  sbx's box
runs on the FUSE union (a detached image box keeps its upper for `sbx start`).
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("run -d", "exec", "stop", "rm")


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit status {r.returncode}: {r.stderr.decode(errors='replace')[-600:]}")
    return took


def main() -> None:
    rootfs, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10
    sbx = shutil.which("sbx") or sys.exit("sbx is not on PATH")
    work = Path(tempfile.mkdtemp(prefix=f"sbx-living-bench-{secrets.token_hex(3)}-", dir="/tmp"))
    podman = ["podman", "--root", str(work / "proot"), "--runroot", str(work / "prun"), "--storage-driver", "overlay"]
    image = "sbx-living-bench:1"
    try:
        timed([sbx, "image", "import", rootfs, "--name", image, "--quiet"])
        timed([sbx, "image", "export", image, "-o", str(work / "image.tar")])
        loaded = subprocess.run([*podman, "load", "-q", "-i", str(work / "image.tar")], capture_output=True,
                                text=True, check=True).stdout.strip().rsplit(" ", 1)[-1]
        steps = {
            "sbx": lambda name: [[sbx, "run", "-d", "--name", name, "--image", image, "--", "sleep", "infinity"],
                                 [sbx, "exec", name, "true"], [sbx, "stop", "-t", "0", name], [sbx, "rm", name]],
            "podman": lambda name: [[*podman, "run", "-d", "--name", name, "--net", "none", loaded, "sleep",
                                     "infinity"], [*podman, "exec", name, "true"],
                                    [*podman, "stop", "-t", "0", name], [*podman, "rm", name]],
        }
        times: dict[tuple[str, str], list[float]] = {(t, s): [] for t in steps for s in STEPS}
        for i in range(n + 1):
            for tool in (list(steps) if i % 2 == 0 else list(reversed(steps))):
                for step, cmd in zip(STEPS, steps[tool](f"bench-{i}"), strict=True):
                    took = timed(cmd)
                    if i:  # the first round warms both
                        times[(tool, step)].append(took)
        for step in (*STEPS, "all"):
            def med(tool: str, step: str = step) -> float:
                if step != "all":
                    return statistics.median(times[(tool, step)])
                return statistics.median([sum(r) for r in zip(*(times[(tool, s)] for s in STEPS), strict=True)])
            s, p = med("sbx"), med("podman")
            print(f"{step:7} sbx {s * 1000:7.0f} ms   podman {p * 1000:7.0f} ms   {s / p:5.2f}x   (medians of {n})")
    finally:
        subprocess.run([*podman, "rm", "-a", "-f"], capture_output=True)
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True)
        subprocess.run([sbx, "image", "rm", image], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
