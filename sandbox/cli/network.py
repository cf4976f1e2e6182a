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
    create.add_argument("--net", metavar="pasta|slirp4netns",
                        help="a way out for the network's boxes, through this user-mode stack (default: none)")
    create.add_argument("--host-loopback", action="store_true",
                        help="with --net: the boxes reach the host's 127.0.0.1 as host.containers.internal")
    create.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOSTPORT:BOXPORT[/PROTO]",
                        help="with --net: a port of the network's boxes on the host (on 127.0.0.1 unless IP)")
    create.set_defaults(func=_create)
    ls = nsub.add_parser("ls", help="the networks")
    ls.set_defaults(func=_ls)
    rm = nsub.add_parser("rm", help="remove networks (their boxes keep what they have)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.set_defaults(func=_rm)


def _create(args: argparse.Namespace) -> int:
    from ..living.network import create
    print(create(args.name, args.idmap, args.net, args.host_loopback, tuple(args.publish)).name)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..living import network
    for name in network.names():
        try:
            print(f"{name:24} up    {network.get(name).way_out or 'closed'}")
        except ConfigError:
            print(f"{name:24} gone")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from ..living.network import remove
    for name in args.names:
        remove(name)
        print(name)
    return 0
