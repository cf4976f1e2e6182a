"""`sbx network create|ls|rm`: networks of boxes (sandbox/living/network.py) from the command line."""

from __future__ import annotations

import argparse

from .parser import Parser, no_command


def build(network: argparse.ArgumentParser) -> None:
    nsub = network.add_subparsers(dest="network_command", parser_class=Parser)
    network.set_defaults(func=no_command(nsub.choices))
    create = nsub.add_parser("create", help="a network: its boxes share its loopback and know each other by name")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--idmap", default="auto", metavar="auto|range|single",
                        help="the id mapping of the network's boxes (they share its user namespace)")
    create.set_defaults(func=_create)
    ls = nsub.add_parser("ls", help="the networks")
    ls.set_defaults(func=_ls)
    rm = nsub.add_parser("rm", help="remove networks (their boxes keep what they have)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.set_defaults(func=_rm)


def _create(args: argparse.Namespace) -> int:
    from ..living.network import create
    print(create(args.name, args.idmap).name)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from ..living import network, state
    for name in network.names():
        path = f"{network.root()}/{name}"
        print(f"{name:24} {'up' if state.alive(path) else 'gone'}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from ..living.network import remove
    for name in args.names:
        remove(name)
        print(name)
    return 0
