"""`--net pasta` against rootless podman's network: the same image, the same download, interleaved.

    python bench/net_bench.py ROOTFS_TAR [N] [MiB]     # as an unprivileged user, from /tmp

ROOTFS_TAR: e.g. `mmdebstrap --mode=unshare --variant=minbase bookworm debian.tar` (it needs bash).  A
file of MiB (default 256) is served on the host's 127.0.0.1; each round, one sbx box (`--net pasta
--host-loopback`, the host at the gateway's address) and one podman container fetch it with bash's
/dev/tcp, and a run of `true` in each gives its start, so that the rate counts the transfer alone.
Debian 12's podman (4.3) has no pasta network: its rootless default, slirp4netns, is what it is measured
with (`allow_host_loopback=true`, the host at 10.0.2.2).
"""

from __future__ import annotations

import http.server
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from image_helpers import OciImage  # noqa: E402

from sandbox.box.netstack import _default_gateway  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit status {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    return took, r.stdout


def main() -> None:
    rootfs_tar = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    size = int(sys.argv[3]) * 2**20 if len(sys.argv) > 3 else 256 * 2**20
    gateway = _default_gateway()
    if gateway is None:
        raise SystemExit("no default IPv4 route: pasta has no gateway to map to the host")
    work = Path(tempfile.gettempdir()) / f"sbx-net-bench-{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    (work / "www").mkdir()
    with open(work / "www" / "big", "wb") as f:
        f.truncate(size)
    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object) -> None:
            super().__init__(*args, directory=str(work / "www"))  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    env = {**os.environ, "XDG_DATA_HOME": str(work / "sbx-data"), "XDG_RUNTIME_DIR": str(work / "xdg")}
    (work / "xdg").mkdir(mode=0o700)
    podman = ["podman", "--root", str(work / "pod"), "--runroot", str(work / "podrun"), "--cgroup-manager=cgroupfs",
              "--runtime", "runc", "--events-backend=none", "--storage-driver", "overlay"]
    try:
        OciImage([rootfs_tar.read_bytes()], compression="").write(work / "a")
        timed([sys.executable, "-m", "sandbox", "image", "import", "--quiet", str(work / "a"), "--name", "a"], env)
        timed([*podman, "pull", "-q", f"oci:{work / 'a'}"], env)
        subprocess.run([*podman, "tag", f"localhost{work / 'a'}:latest", "a"], check=True, env=env)
        tools = {  # how each runs, and where it finds the host's loopback
            "sbx": ([sys.executable, "-m", "sandbox", "run", "--image", "a", "--net", "pasta", "--host-loopback",
                     "--wall-time", "600", "--"], gateway),
            "podman": ([*podman, "run", "--rm", "--network", "slirp4netns:allow_host_loopback=true", "a"],
                       "10.0.2.2"),
        }
        rates: dict[str, list[float]] = {name: [] for name in tools}
        for _ in range(n):
            for name, (run, host) in tools.items():
                fetch = ["bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}; "
                                       "printf 'GET /big HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3 | wc -c"]
                start, _ = timed([*run, "true"], env)
                took, out = timed([*run, *fetch], env)
                if int(out) < size:
                    raise SystemExit(f"{name}: fetched {int(out)} bytes of {size}")
                rates[name].append(size / 2**20 / max(took - start, 1e-3))
        s, p = statistics.median(rates["sbx"]), statistics.median(rates["podman"])
        print(f"| {size >> 20} MiB from the host's loopback, median of {n} | {s:.0f} MiB/s | {p:.0f} MiB/s "
              f"| {s / p:.2f}x |")
    finally:
        server.shutdown()
        subprocess.run([*podman, "system", "reset", "-f"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
