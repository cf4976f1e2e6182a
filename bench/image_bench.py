"""Images against rootless podman, same image, same machine, same run: start, a workload, import time and disk.

    python bench/image_bench.py [ROOTFS_TAR] [N]    # as an unprivileged user

ROOTFS_TAR: e.g. `mmdebstrap --mode=unshare --variant=minbase bookworm debian.tar` (default: a busybox
rootfs).  Image A is that rootfs as one layer; image B is A plus a small layer, so the two share a base.
Both tools import the same OCI layouts (podman through its `oci:` transport) into stores of their own
under a temporary dir.  Podman runs with runc and cgroupfs, as on this machine; timings are interleaved
(this VM drifts by tens of percent) and given as medians and ratios.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from image_helpers import Entry, OciImage, busybox_rootfs, layer_tar, tar_of  # noqa: E402

WORKLOAD = "tar -cf - /usr /etc | wc -c"


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit status {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    return took


def du(path: Path, prefix: list[str] = []) -> int:  # noqa: B006 - never changed
    out = subprocess.run([*prefix, "du", "-sk", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0]) * 1024


def main() -> None:
    rootfs_tar = Path(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else None
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    # podman names an oci: image by its path, which must be a valid reference: lowercase, no "-_" (mkdtemp's
    # random names may have both)
    work = Path(tempfile.gettempdir()) / f"sbx-image-bench-{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    try:
        base = rootfs_tar.read_bytes() if rootfs_tar else tar_of(busybox_rootfs(work / "busybox"), as_root=True)
        OciImage([base], compression="").write(work / "a")
        OciImage([base, layer_tar([Entry("etc/extra", data=b"extra\n")])], compression="").write(work / "b")
        env = {**os.environ, "XDG_DATA_HOME": str(work / "sbx-data"), "XDG_RUNTIME_DIR": str(work / "xdg")}
        (work / "xdg").mkdir(mode=0o700)
        podman = ["podman", "--root", str(work / "pod"), "--runroot", str(work / "podrun"), "--cgroup-manager=cgroupfs",
                  "--runtime", "runc", "--events-backend=none", "--storage-driver", "overlay"]
        try:
            run(work, env, podman, n)
        finally:  # its files belong to subordinate ids: only podman can remove them
            subprocess.run([*podman, "system", "reset", "-f"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, env: dict[str, str], podman: list[str], n: int) -> None:
    sbx = [sys.executable, "-m", "sandbox"]
    print("| what | sbx | podman | sbx / podman |\n|---|---:|---:|---:|")
    imports = {"sbx": 0.0, "podman": 0.0}
    for image in ("a", "b"):
        imports["sbx"] += timed([*sbx, "image", "import", "--quiet", str(work / image), "--name", image], env)
        imports["podman"] += timed([*podman, "pull", "-q", f"oci:{work / image}"], env)
        subprocess.run([*podman, "tag", f"localhost{work / image}:latest", image], check=True, env=env)
    print(f"| import A, then B (B = A + a small layer) | {imports['sbx']:.2f} s | {imports['podman']:.2f} s "
          f"| {imports['sbx'] / imports['podman']:.2f}x |")
    disk = {"sbx": du(work / "sbx-data"), "podman": du(work / "pod", [*podman, "unshare"])}
    print(f"| disk for both | {disk['sbx'] / 2**20:.1f} MiB | {disk['podman'] / 2**20:.1f} MiB "
          f"| {disk['sbx'] / disk['podman']:.2f}x |")
    pod_run = [*podman, "run", "--rm", "--network", "none", "a"]
    for fs in ("auto", "fuse", "kernel"):  # auto: kernel, unless the image keeps owners other than root
        sbx_run = [*sbx, "run", "--image", "a", "--fs", fs, "--"]
        for what, argv, rounds in (("start /bin/true in A (CLI)", ["/bin/true"], n),
                                   (f"`{WORKLOAD}` in A", ["sh", "-c", WORKLOAD], 3)):
            ours, theirs = [], []
            for _ in range(rounds):
                ours.append(timed([*sbx_run, *argv], env))
                theirs.append(timed([*pod_run, *argv], env))
            s, p = statistics.median(ours), statistics.median(theirs)
            print(f"| {what}, --fs {fs}, median of {rounds} | {s * 1000:.0f} ms | {p * 1000:.0f} ms "
                  f"| {s / p:.2f}x |")


if __name__ == "__main__":
    main()
