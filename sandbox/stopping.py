"""SIGINT and SIGTERM end a command's async work the way a cancellation does, so it cleans up before it exits.

Without this, SIGTERM (what a CI runner or `timeout` sends) kills the
interpreter where it stands: the box's processes die with it (parent-death
signals), but the host dirs a union or a judge made stay behind.  Here either
signal cancels the work: the run is killed, the box is closed and its dirs
are removed, and the command exits 128+N with one line.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from .errors import Stopped, single_error

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run(work: Callable[..., Awaitable[T]], *args: object) -> T:
    """`work(*args)` on asyncio (it loads faster than trio), cancelled by SIGINT or SIGTERM (then `Stopped`)."""
    return anyio.run(_until_signalled, work, args, backend="asyncio")


async def _until_signalled(work: Callable[..., Awaitable[T]], args: tuple[object, ...]) -> T:
    stopped: list[int] = []
    done: list[T] = []
    with anyio.open_signal_receiver(*SIGNALS) as signals, single_error():
        async with anyio.create_task_group() as tasks:
            async def watch() -> None:
                async for signum in signals:
                    stopped.append(signum)
                    tasks.cancel_scope.cancel()

            tasks.start_soon(watch)
            done.append(await work(*args))
            tasks.cancel_scope.cancel()
    if not done:
        raise Stopped(stopped[0])
    return done[0]
