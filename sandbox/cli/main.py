"""The `sbx` command line (flags are a contract: see DESIGN.md).

Every failure of the sandbox itself is one line on stderr and exit status
125; a program that cannot be executed gets 126/127 as from a shell; else
the program's own status, or 128+N for signal N.  A run that does not end
OK is explained in one line after the program's own output.

Only the invoked command's module is loaded and only its parser built;
the others are listed (by name and help) only where they are shown or
suggested: `sbx --help`, or a command that does not exist.  Building all
of them cost `sbx run` a fifth of its start (the image store, the judge,
the service).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from ..errors import SandboxError
from .parser import Parser, no_command

# name: (help, the module under cli/ that builds it, and the builder's name there)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("run one program in a fresh box", "run", "build"),
    "judge": ("compile a solution and run it on a directory of tests", "judge", "build"),
    "serve": ("serve go-judge's /run API (and /file, /languages, /metrics) over HTTP", "serve", "build_serve"),
    "worker": ("judge the submissions an sbx serve --redis queues", "serve", "build_worker"),
    "submit": ("send a solution to an sbx serve to judge", "submit", "build"),
    "policy": ("the seccomp policies", "policy", "build"),
    "image": ("the image store: import, pull, push, list, inspect, tag, remove, prune, export", "image", "build"),
    "volume": ("named volumes kept between runs: create, list, inspect, remove, prune", "volume", "build"),
    "network": ("networks whose boxes reach each other by name: create, list, remove", "network", "build"),
    "ps": ("the detached boxes (sbx run -d)", "boxes", "build_ps"),
    "logs": ("a detached box's output", "boxes", "build_logs"),
    "exec": ("run a program in a running detached box", "boxes", "build_exec"),
    "attach": ("a detached box's output from now on, until it ends", "boxes", "build_attach"),
    "stop": ("stop detached boxes: SIGTERM, then SIGKILL", "boxes", "build_stop"),
    "start": ("start stopped boxes again", "boxes", "build_start"),
    "rm": ("remove boxes that ended", "boxes", "build_rm"),
    "export": ("a stopped image box's files as one tar, as docker export", "boxes", "build_export"),
    "build": ("build an image from a Containerfile", "build", "build"),
    "check": ("what this machine supports and what sbx will use", "main", "_build_check"),
}


class _Version(argparse.Action):
    """`sbx --version`: read from the installed package's metadata only when asked."""

    def __init__(self, option_strings: list[str], dest: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print sbx's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        from importlib.metadata import version  # (not on every start: it costs more than a run's setup)
        print(f"sbx {version('sbx')}")
        parser.exit()


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser for `argv`: the invoked command (its first word) built, the others named only when sbx's own
    options come first (`sbx --help`) or the command is not one of them."""
    invoked = argv[0] if argv else None
    parser = Parser(prog="sbx", description="Run untrusted programs in a rootless sandbox.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    parser.set_defaults(func=no_command(_COMMANDS))
    for name, (about, module, builder) in _COMMANDS.items():
        if name == invoked:
            getattr(importlib.import_module(f".{module}", __package__), builder)(sub.add_parser(name, help=about))
        elif invoked not in _COMMANDS:
            sub.add_parser(name, help=about)
    return parser


def _build_check(check: argparse.ArgumentParser) -> None:
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    from .. import doctor
    report = doctor.report()
    print(json.dumps(report, indent=2) if args.json else doctor.table(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # a warning (what teardown left on the host) is one line like every other sbx line
    warnings.formatwarning = lambda message, *_: f"sbx: {message}\n"
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args.func(args))
    except SandboxError as e:
        print(f"sbx: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
