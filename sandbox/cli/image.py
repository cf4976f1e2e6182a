"""`sbx image import|pull|push|ls|inspect|tag|rm|prune|export`: the image store from the command line."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import scratch
from ..errors import ConfigError
from .parser import Parser, no_command

if TYPE_CHECKING:
    from ..images.store import Store


TRANSPORTS = ("docker://", "oci:", "oci-archive:", "docker-archive:", "dir:", "containers-storage:")
"""skopeo's sources that `pull` passes as they are; anything else is a registry reference."""


def _store() -> Store:
    """The image store, loaded by the commands that use it: its unpacker and zstandard would cost every other
    command (`sbx run` without --image) ~30 ms of start."""
    from ..images.store import Store
    return Store()


def _export(args: argparse.Namespace) -> None:
    from ..images.export import export
    export(_store(), args.ref, args.output)


def _one_line(command: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """A failed read or write of a file says so in one line, like every other bad input."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args) or 0
        except OSError as e:
            raise ConfigError(f"{e.filename or 'image'}: {e.strerror or e}") from None
    return run


def build(image: argparse.ArgumentParser) -> None:
    isub = image.add_subparsers(dest="image_command", parser_class=Parser)
    image.set_defaults(func=no_command(isub.choices))
    imp = isub.add_parser("import", help="import a rootfs (dir or tar), a docker-archive or an OCI layout")
    imp.add_argument("path", metavar="FILE|DIR")
    imp.add_argument("--name", metavar="NAME[:TAG]", help="default: the name the archive gives, if any")
    imp.add_argument("--quiet", action="store_true", help="no progress lines")
    imp.set_defaults(func=_one_line(_import))
    pull = isub.add_parser("pull", help="fetch an image through skopeo (docker://NAME:TAG by default) and import it")
    pull.add_argument("ref", metavar="REF", help="NAME[:TAG] from a registry, or any skopeo source (oci:DIR, ...)")
    pull.add_argument("--name", metavar="NAME[:TAG]", help="default: REF without its transport")
    pull.add_argument("--tls-verify", choices=["true", "false"], default="true",
                      help="false: a registry without TLS, or with a certificate not verified (a local one)")
    pull.add_argument("--quiet", action="store_true", help="no progress lines")
    pull.set_defaults(func=_one_line(_pull))
    ls = isub.add_parser("ls", help="the named images")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_one_line(_ls))
    inspect = isub.add_parser("inspect", help="an image's manifest digest, layers and config")
    inspect.add_argument("ref", metavar="NAME[:TAG]")
    inspect.set_defaults(func=_one_line(_inspect))
    tag = isub.add_parser("tag", help="another name for an image")
    tag.add_argument("src", metavar="NAME[:TAG]")
    tag.add_argument("dst", metavar="NEW[:TAG]")
    tag.set_defaults(func=_one_line(lambda a: _store().tag(a.src, a.dst)))
    rm = isub.add_parser("rm", help="forget a name (prune frees what nothing refers to)")
    rm.add_argument("ref", metavar="NAME[:TAG]")
    rm.set_defaults(func=_one_line(lambda a: _store().remove(a.ref)))
    prune = isub.add_parser("prune", help="remove the layers no name refers to and no box uses")
    prune.set_defaults(func=_one_line(_prune))
    push = isub.add_parser("push", help="send an image to a registry (or any skopeo destination) through skopeo")
    push.add_argument("ref", metavar="NAME[:TAG]")
    push.add_argument("dest", metavar="REF", help="REGISTRY/NAME:TAG, or any skopeo destination (oci:DIR, ...)")
    push.add_argument("--tls-verify", choices=["true", "false"], default="true",
                      help="false: a registry without TLS, or with a certificate not verified (a local one)")
    push.set_defaults(func=_one_line(_push))
    exp = isub.add_parser("export", help="write an image as an OCI image layout tar (skopeo's oci-archive)")
    exp.add_argument("ref", metavar="NAME[:TAG]")
    exp.add_argument("-o", "--output", required=True, metavar="FILE")
    exp.set_defaults(func=_one_line(_export))


def _import(args: argparse.Namespace) -> int:
    def progress(line: str) -> None:
        if not args.quiet:
            print(f"sbx: {line}", file=sys.stderr, flush=True)
    image = _store().import_path(args.path, args.name, progress=progress)
    print(f"{image.ref} {image.digest}")
    return 0


def _skopeo(command: str, instead: str) -> str:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise ConfigError(f"sbx image {command} needs skopeo (Debian: apt install skopeo); or {instead}")
    return skopeo


def _said(run: subprocess.CompletedProcess[bytes]) -> str:
    lines = run.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no reason given"


def _pull(args: argparse.Namespace) -> int:
    skopeo = _skopeo("pull", "import an archive: skopeo copy docker://NAME:TAG oci-archive:FILE, then sbx image "
                             "import FILE --name NAME:TAG")
    source = args.ref if args.ref.startswith(TRANSPORTS) else f"docker://{args.ref}"
    if args.name is None and not source.startswith("docker://"):
        raise ConfigError(f"image pull {args.ref}: give --name NAME[:TAG] for a source that is not a registry")
    args.name = args.name or source[len("docker://"):]
    with scratch.workdir(os.path.join(_store().root, "tmp"), "pull-") as work:
        copied = subprocess.run([skopeo, "copy", "--quiet", f"--src-tls-verify={args.tls_verify}", source,
                                 f"oci:{work}/layout:pulled"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if copied.returncode:
            raise ConfigError(f"skopeo could not fetch {source}: {_said(copied)}")
        args.path = os.path.join(work, "layout")
        return _import(args)


def _push(args: argparse.Namespace) -> int:
    """The image exported (export.py), then copied by skopeo; prints the destination and its manifest digest."""
    from ..images.export import export

    skopeo = _skopeo("push", "export the image and copy it: sbx image export NAME -o FILE, then skopeo copy "
                             "oci-archive:FILE docker://REF")
    dest = args.dest if args.dest.startswith(TRANSPORTS) else f"docker://{args.dest}"
    store = _store()
    with scratch.workdir(os.path.join(store.root, "tmp"), "push-") as work:
        archive, digest = os.path.join(work, "image.tar"), os.path.join(work, "digest")
        export(store, args.ref, archive)
        copied = subprocess.run([skopeo, "copy", "--quiet", f"--dest-tls-verify={args.tls_verify}", "--digestfile",
                                 digest, f"oci-archive:{archive}", dest],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        if copied.returncode:
            raise ConfigError(f"skopeo could not push to {dest}: {_said(copied)}")
        with open(digest) as f:
            print(f"{args.dest} {f.read().strip()}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    images = _store().list()
    if args.json:
        print(json.dumps(images, indent=1))
        return 0
    print(f"{'NAME':40} {'DIGEST':19} {'LAYERS':>6} {'SIZE':>10}")
    for i in images:
        print(f"{i['name']:40} {i['digest'][:19]} {i['layers']:>6} {i['size'] / 2**20:>8.1f}Mi")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    image = _store().get(args.ref)
    print(json.dumps({"name": image.ref, "digest": image.digest, "layers": list(image.diff_ids),
                      "config": image.config}, indent=1))
    return 0


def _prune(args: argparse.Namespace) -> int:
    for diff_id in _store().prune():
        print(f"removed layer {diff_id}")
    return 0
