"""`sbx build` against `buildah bud` on the same Containerfile and context, cold and cached, interleaved.

    python bench/build_bench.py ROOTFS_TAR [N]     # as an unprivileged user, from /tmp

ROOTFS_TAR: e.g. `mmdebstrap --mode=unshare --variant=minbase bookworm debian.tar`.  It is imported into
sbx's store and, exported from there as an OCI archive, pulled into a buildah store of the bench's own with
the overlay driver (the kernel's rootless overlayfs on Debian 12's 6.1; buildah's default here is vfs,
which copies every layer whole), RUN under runc, so both start from the same layers.  The
Containerfile installs a local .deb with dpkg, adds a user, copies a small tree and sets a Cmd: four
layers.  Cold: every step run (`--no-cache`); cached: the same build again, every step a cache hit.
Each round runs sbx's and buildah's builds one after the other, alternating which goes first.
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

CONTAINERFILE = """\
FROM {base}
COPY sbx-bench.deb /tmp/
RUN dpkg -i /tmp/sbx-bench.deb && rm /tmp/sbx-bench.deb
RUN useradd -m builder
COPY tree /opt/tree
ENV MODE=bench
CMD ["sbx-bench"]
"""


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit status {r.returncode}: {r.stderr.decode(errors='replace')[-800:]}")
    return took


def context(work: Path) -> Path:
    ctx = work / "ctx"
    pkg = work / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text("Package: sbx-bench\nVersion: 1.0\nArchitecture: all\n"
                                            "Maintainer: sbx <sbx@example.invalid>\nDescription: bench\n")
    (pkg / "usr" / "local" / "bin").mkdir(parents=True)
    tool = pkg / "usr" / "local" / "bin" / "sbx-bench"
    tool.write_text("#!/bin/sh\necho bench\n")
    tool.chmod(0o755)
    (ctx / "tree").mkdir(parents=True)
    for i in range(200):
        (ctx / "tree" / f"f{i}").write_text(f"file {i}\n" * 50)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(ctx / "sbx-bench.deb")], check=True,
                   capture_output=True)
    return ctx


def main() -> None:
    rootfs, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sbx = shutil.which("sbx") or sys.exit("sbx is not on PATH")
    work = Path(tempfile.mkdtemp(prefix=f"sbx-build-bench-{secrets.token_hex(3)}-"))
    buildah = ["buildah", "--root", str(work / "broot"), "--runroot", str(work / "brun"), "--storage-driver",
               "overlay"]
    base = "localhost/sbx-build-bench-base:latest"
    try:
        ctx = context(work)
        run([sbx, "image", "import", rootfs, "--name", "sbx-build-bench-base", "--quiet"])
        run([sbx, "image", "export", "sbx-build-bench-base", "-o", str(work / "base.tar")])
        pulled = subprocess.run([*buildah, "pull", "-q", f"oci-archive:{work / 'base.tar'}"], capture_output=True,
                                text=True, check=True)
        run([*buildah, "tag", pulled.stdout.strip(), base])
        (ctx / "Containerfile.sbx").write_text(CONTAINERFILE.format(base="sbx-build-bench-base"))
        (ctx / "Containerfile.buildah").write_text(CONTAINERFILE.format(base=base))
        builds = {
            "sbx": lambda cold: [sbx, "build", "-q", "-f", "Containerfile.sbx", "-t", "sbx-build-bench:1",
                                 *(["--no-cache"] if cold else []), str(ctx)],
            "buildah": lambda cold: [*buildah, "bud", "-q", "--layers", "-f", str(ctx / "Containerfile.buildah"),
                                     "-t", "sbx-build-bench:1", *(["--no-cache"] if cold else []), str(ctx)],
        }
        for tool in builds:  # warm both caches and page caches once
            run(builds[tool](True))
        times: dict[tuple[str, bool], list[float]] = {(t, c): [] for t in builds for c in (True, False)}
        for i in range(n):
            order = list(builds) if i % 2 == 0 else list(reversed(builds))
            for cold in (True, False):
                for tool in order:
                    times[(tool, cold)].append(run(builds[tool](cold)))
        for cold in (True, False):
            s, b = statistics.median(times[("sbx", cold)]), statistics.median(times[("buildah", cold)])
            print(f"{'cold' if cold else 'cached':7} sbx {s * 1000:8.0f} ms   buildah {b * 1000:8.0f} ms   "
                  f"{s / b:5.2f}x   (medians of {n})")
    finally:
        subprocess.run([*buildah, "rmi", "-a", "-f"], capture_output=True)
        subprocess.run(["buildah", "unshare", "rm", "-rf", str(work / "broot"), str(work / "brun")],
                       capture_output=True)
        subprocess.run([sbx, "image", "rm", "sbx-build-bench-base"], capture_output=True)
        subprocess.run([sbx, "image", "rm", "sbx-build-bench:1"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
