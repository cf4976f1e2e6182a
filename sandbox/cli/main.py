"""The `sbx` command line (flags are a contract: see DESIGN.md).

Every failure of the sandbox itself is one line on stderr and exit status
125; a program that cannot be executed gets 126/127 as from a shell; else
the program's own status, or 128+N for signal N.  A run that does not end
OK is explained in one line after the program's own output.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from ..errors import ConfigError, SandboxError
from . import image, judge, serve, submit


class _Parser(argparse.ArgumentParser):
    """One-line errors (exit 125), and no abbreviated options.

    argparse would take `--tim` as `--time`; a script relying on that breaks
    the day another option starts the same way, so a near miss is refused
    with the nearest real name suggested instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.option_names: list[str] = []
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.option_names += action.option_strings
        return action

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """Each (sub)command refuses what it does not know itself, so the suggestion comes from its own options."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            word = extras[0]
            if not word.startswith("-"):
                raise ConfigError(f"unrecognized argument {word}")
            raise ConfigError(_unrecognized("option", word.partition("=")[0], self.option_names))
        return parsed, extras

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # the only choices here are subcommands: name the nearest one
        if action.choices is not None and value not in action.choices:
            raise ConfigError(_unrecognized("command", value, list(action.choices)))
        super()._check_value(action, value)


def _unrecognized(kind: str, word: str, known: list[str]) -> str:
    """The refusal, with the nearest known name; compared without dashes, which every option shares."""
    names = {name.lstrip("-"): name for name in known}
    near = difflib.get_close_matches(word.lstrip("-"), names, n=1)
    return f"unrecognized {kind} {word}" + (f" (did you mean {names[near[0]]}?)" if near else "")


def _policy_cli() -> Any:
    """Loaded for `sbx policy` only: it brings the policy parser and libseccomp, which no other command needs
    (a box under a shipped policy takes its filter as built with the wheel: prebuilt.py)."""
    from . import policy
    return policy


def _run_cli() -> Any:
    from . import run  # loaded only by this command: the API, anyio and the event loop
    return run


def _no_command(choices: Mapping[str, object]) -> Callable[[argparse.Namespace], NoReturn]:
    """A missing subcommand is checked after parsing (not by argparse's `required`), so that in
    `sbx --verison` the unknown option is what gets reported, with its suggestion."""
    def fail(args: argparse.Namespace) -> NoReturn:
        raise ConfigError(f"no command given (one of {', '.join(choices)})")
    return fail


class _Version(argparse.Action):
    """`sbx --version`: read from the installed package's metadata only when asked."""

    def __init__(self, option_strings: list[str], dest: str) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print sbx's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> NoReturn:
        from importlib.metadata import version  # (not on every start: it costs more than a run's setup)
        print(f"sbx {version('sbx')}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sbx", description="Run untrusted programs in a rootless sandbox.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    parser.set_defaults(func=_no_command(sub.choices))

    run = sub.add_parser(
        "run", help="run one program in a fresh box",
        description="Run PROG in a fresh box. The box sees only the host's /usr, /bin, /sbin, /lib* and the parts "
                    "of /etc a toolchain needs; /box (the working directory), /tmp and /dev/shm start empty. "
                    "Give it more with --ro-bind, --bind or --copy-in.",
        epilog="Exit status: the program's own, 128+N when it was killed by signal N, 126/127 when it is not "
               "executable / not found, 125 when the sandbox could not be set up, a --copy-in failed, or a "
               "--copy-out failed after a run that exited 0, 128+N when sbx itself got SIGINT or SIGTERM (the run "
               "is ended and its box removed first). A run that does not end OK is explained in one line "
               "on stderr after the program's own output (sbx: TLE: 1.00 s of CPU time, limit 1 s).")
    run.add_argument("--policy", default="default", metavar="NAME|FILE",
                     help="seccomp policy: a shipped name (sbx policy list) or a .toml file (default: default)")
    run.add_argument("--time", metavar="S",
                     help="CPU time limit in seconds, summed over every process and thread (default: none, "
                          "--wall-time bounds it)")
    run.add_argument("--wall-time", metavar="S", help="wall-clock time limit in seconds (default 600; none lifts it)")
    run.add_argument("--memory", metavar="SIZE",
                     help="memory limit of the whole run, e.g. 256M (default 1G; none lifts it): the cgroup's "
                          "memory.max when one is delegated, else resident memory sampled by the spawner "
                          "(sbx check says which)")
    run.add_argument("--pids", metavar="N", help="maximum number of processes and threads (default 64)")
    run.add_argument("--cpus", metavar="N", help="CPU bandwidth in cores, e.g. 0.5 (cgroup cpu.max; needs delegation)")
    run.add_argument("--output", metavar="SIZE", help="cap on stdout+stderr (default 64M); more is OLE")
    run.add_argument("--disk", metavar="SIZE",
                     help="size of the writable /box, /tmp, /dev/shm together (default 256M); also the most "
                          "that all --copy-out copies together may bring back")
    run.add_argument("--inodes", metavar="N",
                     help="number of files in them (default 16384); also the most files --copy-out may bring back")
    run.add_argument("--image", metavar="NAME[:TAG]",
                     help="an image of the store (sbx image ls): its layers are the root, its Env, WorkingDir and "
                          "Entrypoint apply, and its Cmd when no PROG is given")
    run.add_argument("--dry-run", action="store_true",
                     help="print the steps that would build the box, one a line, and build nothing")
    run.add_argument("--commit", metavar="NEW[:TAG]",
                     help="with --image (and --fs fuse): after the run, the image plus what the program wrote, "
                          "deletions included, as a new image of the store")
    run.add_argument("--lower", action="append", default=[], metavar="DIR",
                     help="a read-only layer of the root (repeatable, top first): the layers are the whole root, "
                          "instead of the host's system dirs")
    run.add_argument("--fs", default="auto", metavar="fuse|kernel|auto",
                     help="the union of --lower layers: sbx-overlayfs (FUSE), kernel overlayfs, or (auto, the "
                          "default) kernel unless the run needs FUSE: --upper, --commit, or an image with files of "
                          "the program's uid or gid. kernel refuses --upper: it would write straight into the host "
                          "dir, where --disk and --inodes cannot hold")
    run.add_argument("--upper", metavar="DIR",
                     help="keep what the program wrote over the --lower layers here, at most --disk bytes and "
                          "--inodes names (--fs fuse only)")
    run.add_argument("--bind", action="append", default=[], metavar="SRC[:DST]",
                     help="writable bind mount of a host path (repeatable; DST defaults to SRC); with a subuid "
                          "range the program writes as its own uid, so SRC must be writable by others")
    run.add_argument("--ro-bind", action="append", default=[], metavar="SRC[:DST]",
                     help="read-only bind mount of a host path (repeatable; DST defaults to SRC); with a subuid "
                          "range SRC must be readable by others")
    run.add_argument("--tmpfs", action="append", default=[], metavar="DST",
                     help="an empty writable tmpfs at DST (repeatable; each up to --disk and --inodes)")
    run.add_argument("--copy-in", action="append", default=[], metavar="SRC:DST",
                     help="copy the host file or directory SRC to DST in the box before the run (repeatable). "
                          "DST is relative to /box or absolute under /box, /tmp or /dev/shm (a directory may go "
                          "to /box itself: DST .); directories on the way are made. The copies are the "
                          "program's, mode 644, or 755 if executable. Of a directory's tree, regular files and "
                          "directories are copied, symlinks and special files left out (never followed), and "
                          "empty directories not made.")
    run.add_argument("--copy-out", action="append", default=[], metavar="SRC:DST",
                     help="after the run, even a failed one, copy the box file or directory SRC (a path as for "
                          "--copy-in's DST; . is all of /box) to the host path DST, or into DST if it is a "
                          "directory (repeatable). Of a tree, regular files and directories are copied, symlinks "
                          "and special files left out (never followed); an existing host directory is merged "
                          "into. The copies are yours, mode 644, or 755 if executable, less your umask. A file "
                          "already at the destination is replaced, never written through a symlink; a symlink "
                          "where a directory goes is refused. At most --disk bytes and --inodes files in all. (A "
                          "directory of a --fs fuse union cannot be copied out, only its files.)")
    run.add_argument("--cwd", metavar="DIR", help="working directory in the box (default /box, or the image's "
                                                  "WorkingDir)")
    run.add_argument("--env", action="append", default=[], metavar="K=V",
                     help="environment variable (repeatable; the program gets only PATH, HOME and LANG besides)")
    run.add_argument("--net", default="loopback", metavar="none|loopback", help="network (default loopback)")
    run.add_argument("--idmap", default="auto", metavar="auto|range|single",
                     help="uid mapping: subuid range (program has its own uid) or the caller's uid only")
    run.add_argument("--stdin", metavar="FILE", help="file to use as the program's stdin (default: sbx's own)")
    run.add_argument("--json", metavar="FILE|-",
                     help="write the result record as JSON, for every run attempted (also one whose program "
                          "could not be started or whose box could not be set up); with -, stdout carries the "
                          "record alone and the program's stdout goes to stderr")
    run.add_argument("--quiet", action="store_true",
                     help="do not say why a run did not end OK, nor give hints (errors are still said)")
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROG [ARG...]",
                     help="the program: a path in the box, or a name looked up in /usr/local/bin, /usr/bin, /bin")
    run.set_defaults(func=lambda a: _run_cli().command(a))

    judge.add_command(sub)
    serve.add_command(sub)
    submit.add_command(sub)

    policy = sub.add_parser("policy", help="the seccomp policies")
    psub = policy.add_subparsers(dest="policy_command", parser_class=_Parser)
    policy.set_defaults(func=_no_command(psub.choices))
    psub.add_parser("list", help="the shipped policies").set_defaults(
        func=lambda a: _print(_policy_cli().list_policies()))
    show = psub.add_parser("show", help="what a policy allows and blocks")
    show.add_argument("name", metavar="NAME|FILE")
    show.set_defaults(func=lambda a: _print(_policy_cli().show_policy(a.name)))
    pcheck = psub.add_parser("check", help="validate a policy file")
    pcheck.add_argument("file", metavar="FILE")
    pcheck.set_defaults(func=lambda a: _print(_policy_cli().check_policy(a.file)))

    image.add_commands(sub, _Parser, _no_command)

    check = sub.add_parser("check", help="what this machine supports and what sbx will use")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=_cmd_check)
    return parser


def _print(text: str) -> int:
    print(text)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .. import doctor
    report = doctor.report()
    print(json.dumps(report, indent=2) if args.json else doctor.table(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # a warning (what teardown left on the host) is one line like every other sbx line
    warnings.formatwarning = lambda message, *_: f"sbx: {message}\n"
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except SandboxError as e:
        print(f"sbx: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
