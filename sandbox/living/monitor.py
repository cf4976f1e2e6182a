"""A detached box's monitor (as conmon is podman's): one small process per box, that owns the box and outlives the
command that started it.

Started by `sbx run -d` or `sbx start` (detach.py) as `python -m sandbox.living.monitor DIR`, in a session of its
own, with what to run on stdin and a pipe on stdout to say "started" or why not.  It takes DIR's lock first and
holds it for its whole life (state.py), builds the box as `sbx run` would (the same options, checked again),
runs the program with its stdout and stderr into DIR/log (masked as every relay is, rotated: log.py),
and writes the run's record when it ends.  It is the supervisor: the limits and the accounting are the run's as
for any other, and when it dies, killed or not, the box dies with it (the starter's parent-death signals) and
`sbx ps` says so.

SIGTERM or SIGINT (`sbx stop`) is passed on to the program, which has the grace DIR/stop names (default 10 s)
to end; then the run is killed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import anyio

from ..errors import ExecError, SandboxError
from ..run.relay import Relay, program_pipe
from ..run.result import Result, Status
from . import log, state
from .state import BoxState

STOP_GRACE = 10.0
STATS_EVERY = 2.0


def main() -> int:
    path = sys.argv[1]
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the caller's inheritable fds are no box's (a CI runner's pipe)
    lock = state.hold(path)  # (kept open until the process ends: it is the box's liveness)
    payload = json.loads(sys.stdin.buffer.read())
    report = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    name = os.path.basename(path)
    box = BoxState(name, "starting", monitor=os.getpid(), created=time.time())
    try:
        os.chdir(payload["cwd"])
        argv, config, daemon = _configure(payload)
        box = box.replace(command=tuple(argv), image=config.get("image"))
        state.save(path, box)
        if daemon:  # its boot overlaps the API's imports and the box's build
            from ..box.union_daemon import ForkServer
            ForkServer.prime()
        from ..api import Sandbox
        sandbox = Sandbox(**config)
    except SandboxError as e:
        _failed(path, box, str(e), report)
        return 125
    try:
        anyio.run(_live, path, box, sandbox, argv, report, backend="asyncio")
    except Exception as e:  # noqa: BLE001 - said in the state, which must never stay "running"
        why = str(e) if isinstance(e, SandboxError) else f"the monitor failed: {type(e).__name__}: {e}"
        _failed(path, box, why, report)
        return 125
    finally:
        os.close(lock)
    return 0


def _configure(payload: dict[str, Any]) -> tuple[list[str], dict[str, Any], bool]:
    """`sbx run`'s options (its parsed arguments) made into a sandbox's configuration, as the command line does,
    with a detached program's limits; and whether the box needs a FUSE daemon."""
    import argparse

    from ..cli.run import configure
    from .detach import detached_limits

    args = argparse.Namespace(**payload["args"])
    argv, config, spec = configure(args)
    config["secrets"] = {k: bytes.fromhex(v) for k, v in payload["secrets"].items()}
    config["limits"] = detached_limits(config["limits"], args)
    return argv, config, spec.needs_daemon


def _failed(path: str, box: BoxState, why: str, report: Any) -> None:
    state.save(path, box.replace(state="exited", ended=time.time(), exit_status=125, message=why))
    if report.closed:  # (it said "started" already: the command line is gone)
        return
    try:
        report.write(f"error: {why}\n")
        report.close()
    except OSError:
        pass


async def _live(path: str, box: BoxState, sandbox: Any, argv: list[str], report: Any) -> None:
    """The box up, its program run to its end, and its record written.  The command line is told "started" once
    the program runs, or, after the record, why it never did (`exec-error ERRNO WHY`)."""
    result: Result | ExecError | None = None

    def started() -> None:
        report.write("started\n")
        report.close()

    async with sandbox:
        box = box.replace(state="running", started=time.time(), box=sandbox.box_pid)
        state.save(path, box)
        read, write = program_pipe()
        run_scope = anyio.CancelScope()
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(_stop_on_signal, sandbox, path, run_scope)
            watchers.start_soon(_sample, sandbox, path)
            async with anyio.create_task_group() as pumps:
                pumps.start_soon(_log, read, path)
                with run_scope:  # cancelled after a stop's grace: the run is killed
                    try:
                        result = await sandbox.run(argv, stdin=None, stdout=Relay(write), stderr=Relay(write),
                                                   started=started)
                    except ExecError as e:  # not found, not executable: the box ran nothing
                        result = e
                    finally:
                        os.close(write)  # the log's pump reads to the end, then ends
            watchers.cancel_scope.cancel()
    ended = box.replace(state="exited", ended=time.time())
    if result is None:
        state.save(path, ended.replace(exit_status=137, message="stopped: killed after the grace"))
        return
    failure = result if isinstance(result, ExecError) else None
    if failure is not None:
        result = Result.not_run(Status.RE, failure.exit_status, str(failure))
    assert isinstance(result, Result)
    state.write_text(path, "record.json", result.to_json())
    state.save(path, ended.replace(exit_status=result.shell_status,
                                   message="" if result.status is Status.OK else result.summary))
    if failure is not None:
        report.write(f"exec-error {failure.errno} {failure}\n")
        report.close()


async def _log(read: int, path: str) -> None:
    """The program's output into the box's log (log.py) until its last writer closes."""
    writer = log.Writer(path)
    try:
        os.set_blocking(read, False)
        while True:
            await anyio.wait_readable(read)
            try:
                data = os.read(read, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                return
            writer.write(data)
    finally:
        writer.close()
        os.close(read)


async def _sample(sandbox: Any, path: str) -> None:
    """The box's CPU time and memory so far (Sandbox.usage), in DIR/stats.json every STATS_EVERY seconds, for
    `sbx ps`."""
    while True:
        cpu, memory = sandbox.usage()
        state.write_json(path, "stats.json", {"cpu": round(cpu, 3), "memory": memory, "at": time.time()})
        await anyio.sleep(STATS_EVERY)


async def _stop_on_signal(sandbox: Any, path: str, run: anyio.CancelScope) -> None:
    """SIGTERM or SIGINT: SIGTERM to the program, then, after the grace, the run killed."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            await sandbox.signal(signal.SIGTERM)
            try:
                with open(os.path.join(path, "stop")) as f:
                    grace = float(f.read().strip() or STOP_GRACE)
            except (OSError, ValueError):
                grace = STOP_GRACE
            await anyio.sleep(max(0.0, grace))
            run.cancel()
            return


if __name__ == "__main__":
    sys.exit(main())
