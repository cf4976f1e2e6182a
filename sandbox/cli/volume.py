"""`sbx volume create|ls|inspect|rm|prune`: the named volumes (volumes.py) from the command line."""

from __future__ import annotations

import argparse
import json
import time

from ..run.limits import parse_count, parse_size
from ..volumes import DEFAULT_INODES, DEFAULT_SIZE, Usage, Volume, Volumes
from .parser import Parser, no_command


def build(volume: argparse.ArgumentParser) -> None:
    vsub = volume.add_subparsers(dest="volume_command", parser_class=Parser)
    volume.set_defaults(func=no_command(vsub.choices))
    create = vsub.add_parser("create", help="make a volume (sbx run --volume makes one with the default caps)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--size", default=None, metavar="SIZE",
                        help=f"the most its files may hold (default {DEFAULT_SIZE // 2**30}G)")
    create.add_argument("--inodes", default=None, metavar="N",
                        help=f"the most names it may hold (default {DEFAULT_INODES})")
    create.set_defaults(func=_create)
    ls = vsub.add_parser("ls", help="the volumes")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_ls)
    inspect = vsub.add_parser("inspect", help="a volume's path, caps and what it holds")
    inspect.add_argument("names", nargs="+", metavar="NAME")
    inspect.set_defaults(func=_inspect)
    rm = vsub.add_parser("rm", help="remove volumes and their files (not one a box uses)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.set_defaults(func=_rm)
    prune = vsub.add_parser("prune", help="remove every volume no box uses")
    prune.set_defaults(func=_prune)


def _create(args: argparse.Namespace) -> int:
    size = parse_size(args.size, "--size") if args.size else DEFAULT_SIZE
    inodes = parse_count(args.inodes, "--inodes") if args.inodes else DEFAULT_INODES
    print(Volumes().create(args.name, size, inodes).name)
    return 0


def _record(volume: Volume, usage: Usage) -> dict[str, object]:
    return {"name": volume.name, "path": volume.data, "size": volume.size, "inodes": volume.inodes,
            "created": _when(volume.created), "used_bytes": usage.bytes, "used_inodes": usage.inodes,
            "usage_complete": usage.complete}


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _ls(args: argparse.Namespace) -> int:
    store = Volumes()
    listed = [(v, store.usage(v)) for v in store.all()]
    if args.json:
        print(json.dumps([_record(v, u) for v, u in listed], indent=1))
        return 0
    print(f"{'NAME':32} {'USED':>10} {'SIZE':>10} {'INODES':>15}  CREATED")
    for v, u in listed:
        used = f"{u.bytes / 2**20:.1f}Mi{'' if u.complete else '+'}"
        print(f"{v.name:32} {used:>10} {v.size / 2**20:>8.0f}Mi {u.inodes:>7}/{v.inodes:<7}  {_when(v.created)}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    store = Volumes()
    volumes = [store.get(name) for name in args.names]
    print(json.dumps([_record(v, store.usage(v)) for v in volumes], indent=1))
    return 0


def _rm(args: argparse.Namespace) -> int:
    store = Volumes()
    for name in args.names:
        store.remove(name)
        print(name)
    return 0


def _prune(args: argparse.Namespace) -> int:
    for name in Volumes().prune():
        print(f"removed volume {name}")
    return 0
