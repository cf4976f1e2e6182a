"""`sbx build`: an image from a Containerfile (sandbox/build/), each step said as it goes."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError
from ..run.limits import Limits, parse_count, parse_seconds, parse_size


def build(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build an image from a Containerfile: FROM, RUN, COPY, ADD, ENV, ARG, WORKDIR, USER, ENTRYPOINT, CMD, LABEL, "
        "EXPOSE, VOLUME, SHELL. Each RUN is a box on the image so far, as root of the box, under the build policy, "
        "with no network unless --net gives one; each RUN, COPY and ADD is a layer, kept in a build cache. "
        "Progress and the RUNs' output go to stderr; the image's name and digest to stdout.")
    parser.add_argument("context", metavar="CONTEXT", help="the directory COPY and ADD read (hostile input: a link "
                                                           "out of it is refused)")
    parser.add_argument("-f", "--file", metavar="FILE",
                        help="the Containerfile, from the working directory as docker's -f "
                             "(default: CONTEXT/Containerfile, else CONTEXT/Dockerfile)")
    parser.add_argument("-t", "--tag", metavar="NAME[:TAG]", help="the name of the image built")
    parser.add_argument("--build-arg", action="append", default=[], metavar="K=V", help="an ARG's value")
    parser.add_argument("--secret", action="append", default=[], metavar="id=NAME,src=FILE|env=VAR",
                        help="a secret at /run/secrets/NAME in every RUN: masked in its output, never in a layer")
    parser.add_argument("--net", default="none", metavar="none|loopback|pasta|slirp4netns",
                        help="the RUNs' network (default none; pasta or slirp4netns: outbound through a user-mode "
                             "stack)")
    parser.add_argument("--no-cache", action="store_true", help="run every step again")
    parser.add_argument("--policy", default="build", metavar="NAME|FILE|none",
                        help="the RUNs' seccomp policy (default build)")
    parser.add_argument("--memory", metavar="SIZE", help="memory of one RUN (default 2G)")
    parser.add_argument("--pids", metavar="N", help="processes of one RUN (default 512)")
    parser.add_argument("--wall-time", metavar="S", help="wall-clock time of one RUN (default 3600)")
    parser.add_argument("--disk", metavar="SIZE", help="what one step may write: its layer (default 8G)")
    parser.add_argument("--inodes", metavar="N", help="names one step may make (default 1048576)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines (the RUNs' output still)")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from .. import hostpath, stopping
    from ..build import Options
    from ..build import build as run_build
    from ..run.relay import Relay
    from .run import read_secret

    defaults = Options("", "")
    limits = Limits(memory=parse_size(args.memory, "--memory") if args.memory else defaults.limits.memory,
                    pids=parse_count(args.pids, "--pids") if args.pids else defaults.limits.pids,
                    wall_time=parse_seconds(args.wall_time, "--wall-time") if args.wall_time else
                    defaults.limits.wall_time)
    opts = Options(
        containerfile=os.path.abspath(args.file) if args.file else _default_file(args.context),
        context=args.context, tag=args.tag,
        build_args=dict(_build_arg(a) for a in args.build_arg),
        secrets=dict(read_secret(s, hostpath.Guard()) for s in args.secret), net=args.net, no_cache=args.no_cache,
        policy=None if args.policy == "none" else args.policy, limits=limits,
        disk=parse_size(args.disk, "--disk") if args.disk else defaults.disk,
        inodes=parse_count(args.inodes, "--inodes") if args.inodes else defaults.inodes)

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    image = stopping.run(run_build, opts, say, Relay(2), Relay(2))
    print(f"{image.ref or '(unnamed)'} {image.digest}")
    return 0


def _build_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--build-arg {text!r}: expected NAME=VALUE")
    return key, value


def _default_file(context: str) -> str:
    for name in ("Containerfile", "Dockerfile"):
        if os.path.lexists(os.path.join(context, name)):
            return name
    raise ConfigError(f"sbx build: {context} has no Containerfile or Dockerfile (give -f FILE)")
