"""`sbx run -d` and `sbx start`: a box's monitor (monitor.py) started in a session of its own, and left running.

The command line checks everything as `sbx run` does (one line for bad input, before anything is started),
takes the name (state.py), reads the secrets as the caller, and starts the monitor with what to run on a pipe:
`sbx run`'s options (never a secret's value in a file: the values go over the pipe), the working directory, and
the secrets.  It waits for the monitor to say "started", once the program runs (then it prints the name), or why
not (then the name is freed again, and a program that is not there or cannot be executed is exit status 127 or 126,
as for `sbx run`), so a box that cannot start is reported here, in one line.

An image's box keeps what its program writes in DIR/upper (the FUSE union's upper, unless `--upper` names
another), so that `sbx start` runs it again on the same files; a box on the host's root keeps nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from typing import Any

from .. import teardown
from ..errors import ConfigError, ExecError
from ..run.limits import Limits
from . import state

_ONE_SHOT_ONLY = ("copy_in", "copy_out", "json", "stdin", "dry_run", "commit")


def command(args: argparse.Namespace) -> int:
    """`sbx run -d`."""
    given = [f"--{o.replace('_', '-')}" for o in _ONE_SHOT_ONLY if getattr(args, o)]
    if given:
        raise ConfigError(f"run -d: {given[0]} is for a run that sbx waits for")
    name = state.check_name(args.name) if args.name else f"box-{secrets.token_hex(4)}"
    saved = {k: v for k, v in vars(args).items() if k not in ("func", "detach", "name")}
    path = state.create(name)
    try:
        if args.image and not args.upper and args.fs != "kernel":  # its files, kept for `sbx start`
            os.mkdir(os.path.join(path, "upper"), 0o755)
            saved.update(upper=os.path.join(path, "upper"), fs="fuse")
        state.write_json(path, "run.json", {"args": saved, "cwd": os.getcwd()})
        if args.network:  # the other boxes of its network know it by name from its start
            from .network import add_name, get
            add_name(get(args.network), name)
        _start(path, saved, os.getcwd())
    except BaseException:
        if args.network:
            from .network import drop_name
            drop_name(args.network, name)
        teardown.remove_tree(path)
        raise
    print(name)
    return 0


def start(name: str) -> None:
    """`sbx start NAME`: the same box again, from what `sbx run -d` was given (its files kept, for an image)."""
    path = state.path_of(name)
    saved = state.read_json(path, "run.json")
    if state.alive(path):
        raise ConfigError(f"box {name}: it is running")
    for leftover in ("record.json", "stop", "stats.json"):
        try:
            os.unlink(os.path.join(path, leftover))
        except FileNotFoundError:
            pass
    _start(path, saved["args"], saved["cwd"])


def _start(path: str, saved: dict[str, Any], cwd: str) -> None:
    from ..cli.run import configure

    os.chdir(cwd)
    config = configure(argparse.Namespace(**saved))[1]  # everything checked here, before the monitor starts
    values = {k: v.hex() for k, v in config.get("secrets", {}).items()}  # read here, as the caller
    payload = json.dumps({"args": {**saved, "secret": []}, "cwd": cwd, "secrets": values}).encode()
    to_monitor, from_cli = os.pipe2(os.O_CLOEXEC)
    said_r, said_w = os.pipe2(os.O_CLOEXEC)
    try:
        os.posix_spawn(sys.executable, [sys.executable, "-m", "sandbox.living.monitor", path], dict(os.environ),
                       file_actions=[(os.POSIX_SPAWN_DUP2, to_monitor, 0), (os.POSIX_SPAWN_DUP2, said_w, 1),
                                     (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
                       setsid=True, setsigdef=(signal.SIGPIPE,))
    finally:
        os.close(to_monitor)
        os.close(said_w)
    try:
        with os.fdopen(from_cli, "wb") as f:
            f.write(payload)
        with os.fdopen(said_r, "r") as f:
            said = f.readline().strip()
    except OSError as e:
        raise ConfigError(f"box {os.path.basename(path)}: its monitor did not start: {e.strerror}") from None
    if said.startswith("exec-error "):  # the box started, and its program could not: as `sbx run` says it
        _, errno, why = said.split(" ", 2)
        deadline = time.monotonic() + 30
        while state.alive(path) and time.monotonic() < deadline:  # (its monitor is ending: its record is written)
            time.sleep(0.01)
        raise ExecError(why, int(errno))
    if said != "started":
        raise ConfigError(said.removeprefix("error: ") or f"box {os.path.basename(path)}: its monitor ended")


def exec_config(name: str) -> dict[str, Any]:
    """What a process `sbx exec` starts in the running box NAME gets: the box's policy, limits (no wall time unless
    given), ids, environment (its image's too), working directory and secrets, read again as the caller."""
    from ..cli.run import configure

    saved = state.read_json(state.path_of(name), "run.json")
    os.chdir(saved["cwd"])
    args = argparse.Namespace(**saved["args"])
    _, config, spec = configure(args)
    return {"policy": config["policy"], "idmap": config["idmap"], "user": "0" if spec.ids.root else None,
            "env": dict(spec.env), "cwd": spec.cwd,
            "secrets": config.get("secrets", {}), "net": "none" if config["net"] == "none" else "loopback",
            "limits": detached_limits(config["limits"], args)}


def detached_limits(limits: Limits, args: argparse.Namespace) -> Limits:
    """The limits of a detached box's program, and of what `sbx exec` runs in it: `sbx run`'s, but no output
    limit (the log is rotated instead) and no wall-time limit unless --wall-time gave one."""
    return limits.replace(output=None, wall_time=limits.wall_time if args.wall_time else None)
