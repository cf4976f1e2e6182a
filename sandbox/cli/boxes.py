"""`sbx ps`, `logs`, `stop`, `start` and `rm`: detached boxes (sandbox/living/) from the command line."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shlex
import signal
import sys
import time
from typing import Any, BinaryIO

from ..errors import ConfigError
from ..living import state


def build_ps(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", "--all", action="store_true", help="also the boxes that ended")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_ps)


def build_logs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing what comes, until the box ends")
    parser.add_argument("--since", metavar="WHEN", help="only what came from WHEN on: a duration back from now "
                        "(10m, 1h30m), seconds since the epoch, or a time (2026-12-07T15:04:05Z)")
    parser.set_defaults(func=_logs)


def build_attach(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.set_defaults(func=_attach)


def build_stop(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("-t", "--time", type=float, default=10.0, metavar="S",
                        help="how long the program has to end after SIGTERM, before it is killed (default 10)")
    parser.set_defaults(func=_stop)


def build_start(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.set_defaults(func=_start)


def build_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("-o", "--output", required=True, metavar="FILE")
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from ..living.export import export
    export(args.name, args.output)
    return 0


def build_rm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("-f", "--force", action="store_true", help="stop a running box first (no grace)")
    parser.set_defaults(func=_rm)


def build_exec(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="more environment")
    parser.add_argument("-w", "--workdir", metavar="DIR", help="the working directory (default: the box's)")
    parser.add_argument("-t", "--tty", action="store_true",
                        help="give the program a terminal of its own (a new pseudo-terminal, relayed, never sbx's "
                             "own, that is its controlling terminal: ^C and job control work), sbx's terminal in raw "
                             "mode meanwhile")
    parser.add_argument("-i", "--interactive", action="store_true", help="with -t: relay sbx's stdin to it")
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("program", nargs=argparse.REMAINDER, metavar="PROG [ARG...]")
    parser.set_defaults(func=_exec)


def _exec(args: argparse.Namespace) -> int:
    """A new process in a running box: the box's namespaces entered (no box made), under the policy and limits
    the box was given, with the box's environment and secrets (masked in what it prints); sbx's stdin is its."""
    from .. import stopping
    from ..api import Sandbox
    from ..living import detach
    from ..run.relay import Relay
    from .run import _env_pair

    argv = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not argv:
        raise ConfigError("exec: no program given (usage: sbx exec NAME PROG [ARG...])")
    box = state.status(args.name)
    if box.state != "running":
        raise ConfigError(f"box {args.name}: not running ({box.state})")
    config = detach.exec_config(args.name)
    config["env"] = {**config["env"], **dict(_env_pair(e) for e in args.env)}
    if args.workdir:
        config["cwd"] = args.workdir
    sandbox = Sandbox(join=box.box, **config)

    async def session() -> int:
        async with sandbox:
            if args.tty:
                result = await _on_a_terminal(sandbox, argv, args.interactive)
            else:
                result = await sandbox.run(argv, stdin=0, stdout=Relay(1), stderr=Relay(2))
        if result.status.value != "OK":
            print(f"sbx: {result.summary}", file=sys.stderr)
        return result.shell_status

    return stopping.run(session)


async def _on_a_terminal(sandbox: Any, argv: list[str], interactive: bool) -> Any:
    """The run on a new pseudo-terminal: what the program writes, masked, to sbx's stdout, and (interactive) what
    sbx reads, to the program.  The program never gets sbx's own terminal, so no TIOCSTI of its reaches it."""
    import pty
    import termios
    import tty

    import anyio

    master, slave = pty.openpty()
    restore = termios.tcgetattr(0) if os.isatty(0) else None
    if restore is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
        tty.setraw(0)
    mask = sandbox.mask()

    async def out() -> None:
        while True:
            await anyio.wait_readable(master)
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every end of the slave is closed
                data = b""
            if not data:
                break
            os.write(1, mask.feed(data))
        os.write(1, mask.flush())

    async def into() -> None:
        while True:
            await anyio.wait_readable(0)
            data = os.read(0, 1 << 16)
            if not data:
                return
            os.write(master, data)

    try:
        async with anyio.create_task_group() as tasks:
            if interactive:
                tasks.start_soon(into)
            async with anyio.create_task_group() as output:  # it ends at EIO, once the run's last end is closed
                output.start_soon(out)
                try:
                    result = await sandbox.run(argv, stdin=slave, stdout=slave, stderr=slave, terminal=True)
                finally:
                    os.close(slave)
            tasks.cancel_scope.cancel()
    finally:
        os.close(master)
        if restore is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, restore)
    return result


def _ps(args: argparse.Namespace) -> int:
    boxes = [state.status(n) for n in state.names()]
    boxes = [b for b in boxes if args.all or b.state in ("starting", "running")]
    usage = {b.name: state.usage(b.name) for b in boxes}
    if args.json:
        print(json.dumps([{"name": b.name, "image": b.image, "command": list(b.command), "state": b.state,
                           "uptime": round(state.uptime(b), 3), "cpu": usage[b.name][0], "memory": usage[b.name][1],
                           "exit_status": b.exit_status, "message": b.message} for b in boxes], indent=1))
        return 0
    print(f"{'NAME':20} {'IMAGE':20} {'COMMAND':26} {'STATE':8} {'UPTIME':>8} {'CPU':>8} {'MEM':>9}  STATUS")
    for b in boxes:
        ended = f"exit {b.exit_status}" if b.exit_status is not None else ""
        cpu, memory = usage[b.name]
        print(f"{b.name:20} {(b.image or '-'):20} {shlex.join(b.command)[:26]:26} {b.state:8} "
              f"{state.uptime(b):7.0f}s {cpu:7.2f}s {memory / 2**20:7.1f}Mi  {ended} {b.message}".rstrip())
    return 0


def _logs(args: argparse.Namespace) -> int:
    from ..living import log
    path = state.path_of(args.name)
    when = None if args.since is None else log.parse_since(args.since)
    state.status(args.name)  # (a box that does not exist is an error, not an empty log)
    out = sys.stdout.buffer
    where = log.copy(path, ("log.1", 0) if when is None else log.since(path, when), out)
    return _follow(path, out, where) if args.follow else 0


def _attach(args: argparse.Namespace) -> int:
    """What the box prints from now on, until it ends (Ctrl-C leaves it running).  Its stdin is /dev/null: a
    detached program reads nothing from a terminal."""
    from ..living import log
    path = state.path_of(args.name)
    box = state.status(args.name)
    if box.state not in ("starting", "running"):
        raise ConfigError(f"box {args.name}: not running ({box.state})")
    try:
        return _follow(path, sys.stdout.buffer, log.end(path))
    except KeyboardInterrupt:
        return 0


def _follow(path: str, out: BinaryIO, where: tuple[int, int]) -> int:
    """Print what the log gains after `where` until the box's monitor ends."""
    from ..living import log
    while True:
        alive = state.alive(path)
        where = log.copy_new(path, where, out)
        if not alive:
            return 0
        time.sleep(0.2)


def _stop(args: argparse.Namespace) -> int:
    for name in args.names:
        stop(name, args.time)
        print(name)
    return 0


def stop(name: str, grace: float) -> None:
    """SIGTERM to the program (through its monitor), and SIGKILL after `grace`; returns once the box is gone."""
    path = state.path_of(name)
    box = state.status(name)
    if box.state not in ("starting", "running"):
        raise ConfigError(f"box {name}: not running ({box.state})")
    with open(os.path.join(path, "stop"), "w") as f:
        f.write(str(max(0.0, grace)))
    try:
        os.kill(box.monitor, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace + 30
    while state.alive(path):
        if time.monotonic() > deadline:
            os.kill(box.monitor, signal.SIGKILL)  # a monitor that does not end: the box dies with it
            break
        time.sleep(0.05)


def _start(args: argparse.Namespace) -> int:
    from ..living import detach
    for name in args.names:
        detach.start(name)
        print(name)
    return 0


def _rm(args: argparse.Namespace) -> int:
    from .. import teardown
    for name in args.names:
        box = state.status(name)
        if box.state in ("starting", "running"):
            if not args.force:
                raise ConfigError(f"box {name}: it is running (sbx stop {name} first, or sbx rm -f)")
            stop(name, 0)
        network = state.read_json(state.path_of(name), "run.json")["args"].get("network")
        if network:  # its name goes from its network's hosts
            from ..living.network import drop_name
            drop_name(network, name)
        left = teardown.remove_tree(state.path_of(name))
        if left:
            raise ConfigError(f"box {name}: could not remove all of it: {'; '.join(left)}")
        print(name)
    return 0
