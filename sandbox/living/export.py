"""`sbx export NAME -o FILE`: a stopped image box's root filesystem as one tar, as `docker export` gives it.

The image's layers with the box's upper on top (its files, kept for `sbx start`) are mounted read-only on a
scratch dir of the image store by the FUSE union (`sbx-overlayfs`, through fusermount3), which shows the
merged tree with the box's owners and modes; the tar is made from that mount through fds (images/tar.py), then
the mount goes.  The box must be stopped: a running program would still write its upper.

The daemon is this process's child, in the foreground, and is told to stop (SIGTERM, on which it unmounts) when
this process dies, however it dies: an export killed midway leaves no mount behind, and its scratch dir goes
with the next export's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from .. import scratch, tools
from .. import syscalls as sc
from ..errors import ConfigError
from . import state


def export(name: str, out: str) -> None:
    from ..images.store import Store
    from ..images.tar import tar_layer

    box = state.status(name)
    if box.state in ("starting", "running"):
        raise ConfigError(f"box {name}: it is running (sbx stop {name} first)")
    args = state.read_json(state.path_of(name), "run.json")["args"]
    if not args.get("image"):
        raise ConfigError(f"box {name}: it runs on the host's root, and has no filesystem of its own to export")
    if tools.find("fusermount3") is None:
        raise ConfigError("sbx export needs fusermount3 (package fuse3)")
    store = Store()
    image, pins = store.pin(args["image"])
    try:
        layers = [*([args["upper"]] if args.get("upper") else []),
                  *(os.path.join(store.layer_dir(c), "root") for c in reversed(image.chain_ids))]
        uid, gid = os.getuid(), os.getgid()  # the caller's files are the box's root's
        with scratch.workdir(os.path.join(store.root, "tmp"), "export-") as work:
            mount = os.path.join(work, "root")
            os.mkdir(mount, 0o700)
            said = tempfile.TemporaryFile("w+", dir=work)
            daemon = subprocess.Popen(  # (sbx-overlayfs, from this very installation)
                [sys.executable, "-m", "fuse_overlay.cli", "-f", "-o", f"lowerdir={':'.join(layers)},"
                 f"uidmapping=0:{uid}:1,gidmapping=0:{gid}:1,ro", mount], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=said,
                preexec_fn=lambda: sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGTERM))
            try:
                while not os.path.ismount(mount):
                    if daemon.poll() is not None:
                        said.seek(0)
                        why = (said.read().strip().splitlines() or ["no reason"])[-1]
                        raise ConfigError(f"box {name}: its files cannot be read: {why}")
                    time.sleep(0.01)
                tar_layer(mount, os.path.abspath(out), f"box {name}", merged=True)
            finally:
                daemon.terminate()
                daemon.wait()
                said.close()
    finally:
        for fd in pins:
            os.close(fd)
