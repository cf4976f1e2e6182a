"""`sbx export NAME -o FILE`: a stopped image box's root filesystem as one tar, as `docker export` gives it.

The image's layers with the box's upper on top (its files, kept for `sbx start`) are mounted read-only on a
scratch dir of the image store by the FUSE union (`sbx-overlayfs`, through fusermount3), which shows the
merged tree with the box's owners and modes; the tar is made from that mount through fds (images/tar.py), then
the mount goes.  The box must be stopped: a running program would still write its upper.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .. import scratch, tools
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
            served = subprocess.run(  # (sbx-overlayfs, from this very installation)
                [sys.executable, "-m", "fuse_overlay.cli", "-o", f"lowerdir={':'.join(layers)},"
                 f"uidmapping=0:{uid}:1,gidmapping=0:{gid}:1,ro", mount], capture_output=True, text=True)
            if served.returncode:
                said = served.stderr.strip().splitlines()
                raise ConfigError(f"box {name}: its files cannot be read: {said[-1] if said else 'no reason'}")
            try:
                tar_layer(mount, os.path.abspath(out), f"box {name}", merged=True)
            finally:
                subprocess.run([tools.find("fusermount3") or "", "-u", mount], capture_output=True)
    finally:
        for fd in pins:
            os.close(fd)
