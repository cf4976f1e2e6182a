"""A pool of prepared boxes, the way judge backends keep pre-forked containers.

Building a box costs tens of milliseconds (namespaces, uid map, root tree);
a run in a built box costs about a fork+exec.  The pool builds boxes ahead,
hands out clean ones, resets returned ones in the background, and replaces a
box that fails to reset, so a hostile run can never leave anything for the
next one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .api import Sandbox
from .errors import ConfigError, SandboxError
from .turns import Turns


class SandboxPool:
    """`size` boxes built alike from `sandbox_options` (the keyword arguments of `Sandbox`).

    Boxes are handed out first come, first served, and a request for several
    (`acquire_many`: an interactive pair, a pipeline) takes them all at once
    when enough are ready, holding none while it waits: two requests can never
    each hold one box and wait for the other's.  A box whose reset fails, or
    takes longer than `RESET_TIMEOUT`, is replaced, so every box comes back.
    """

    RESET_TIMEOUT = 30.0
    """Seconds a returned box may take to be reset before it is discarded and replaced."""

    def __init__(self, size: int, **sandbox_options: Any) -> None:
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"pool size must be a positive integer, not {size!r}")
        if size > 1 and sandbox_options.get("upper") is not None:
            raise ConfigError(f"a pool of {size} boxes cannot share one --upper: an upper has one writer at a time "
                              "(use size=1, or a Sandbox of its own per upper)")
        self.size = size
        self._options = sandbox_options
        self._ready: deque[Sandbox] = deque()
        self._turns = Turns()
        self._busy = 0
        self._resetting = 0
        self._boxes: set[Sandbox] = set()
        self._tasks: TaskGroup | None = None
        self._closing = False

    async def __aenter__(self) -> SandboxPool:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        try:
            async with anyio.create_task_group() as starting:
                for _ in range(self.size):
                    starting.start_soon(self._add)
        except BaseException as e:
            await self.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._tasks is not None
        self._closing = True
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(*exc)
        with anyio.CancelScope(shield=True):
            for box in list(self._boxes):
                await box.aclose()
        self._boxes.clear()

    async def _add(self) -> None:
        box = Sandbox(**self._options)
        await box.__aenter__()
        self._boxes.add(box)
        await self._put(box)

    async def _put(self, box: Sandbox) -> None:
        self._ready.append(box)
        await self._turns.changed()

    async def _take(self, n: int) -> list[Sandbox]:
        """`n` ready boxes at once, in turn with the other waiters (turns.py); none is held while waiting."""
        if n > self.size:
            raise ConfigError(f"{n} boxes at once from a pool of {self.size}")
        async with self._turns.first(lambda: len(self._ready) >= n):
            self._busy += n
            return [self._ready.popleft() for _ in range(n)]

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Sandbox]:
        """A clean, prepared box for the duration of the block; reset in the background afterwards."""
        async with self.acquire_many(1) as (box,):
            yield box

    @asynccontextmanager
    async def acquire_many(self, n: int) -> AsyncIterator[tuple[Sandbox, ...]]:
        """`n` clean boxes together (at most the pool's size), for a run that needs them at once."""
        boxes = await self._take(n)
        try:
            yield tuple(boxes)
        finally:
            self._busy -= n
            if not self._closing:  # a closing pool closes every box itself
                assert self._tasks is not None
                for box in boxes:
                    self._resetting += 1
                    self._tasks.start_soon(self._recycle, box)

    async def _recycle(self, box: Sandbox) -> None:
        try:
            with anyio.fail_after(self.RESET_TIMEOUT):
                await box.reset()
        except (SandboxError, TimeoutError):
            self._boxes.discard(box)
            with anyio.CancelScope(shield=True):
                await box.aclose()
            await self._replace()
        else:
            await self._put(box)
        finally:
            self._resetting -= 1

    async def _replace(self) -> None:
        """A new box for one that was discarded, tried until one is built (a full disk, a process limit): a pool
        that shrank for good would leave a request for all its boxes waiting forever."""
        delay = 0.1
        while True:
            try:
                await self._add()
                return
            except SandboxError:
                await anyio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def stats(self) -> dict[str, int]:
        return {"ready": len(self._ready), "busy": self._busy, "resetting": self._resetting,
                "waiting": len(self._turns)}
