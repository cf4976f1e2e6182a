"""A pool of prepared boxes, the way judge backends keep pre-forked containers.

Building a box costs tens of milliseconds (namespaces, uid map, root tree);
a run in a built box costs about a fork+exec.  The pool builds boxes ahead,
hands out clean ones, resets returned ones in the background, and replaces a
box that fails to reset, so a hostile run can never leave anything for the
next one.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from .api import Sandbox
from .errors import ConfigError, SandboxError


class SandboxPool:
    """`size` boxes built alike from `sandbox_options` (the keyword arguments of `Sandbox`)."""

    def __init__(self, size: int, **sandbox_options: Any) -> None:
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"pool size must be a positive integer, not {size!r}")
        if size > 1 and sandbox_options.get("upper") is not None:
            raise ConfigError(f"a pool of {size} boxes cannot share one --upper: an upper has one writer at a time "
                              "(use size=1, or a Sandbox of its own per upper)")
        self.size = size
        self._options = sandbox_options
        self._ready_send, self._ready = anyio.create_memory_object_stream[Sandbox](math.inf)
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
        self._ready_send.send_nowait(box)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Sandbox]:
        """A clean, prepared box for the duration of the block; reset in the background afterwards."""
        box = await self._ready.receive()
        self._busy += 1
        try:
            yield box
        finally:
            self._busy -= 1
            if not self._closing:  # a closing pool closes every box itself
                self._resetting += 1
                assert self._tasks is not None
                self._tasks.start_soon(self._recycle, box)

    async def _recycle(self, box: Sandbox) -> None:
        try:
            await box.reset()
        except SandboxError:
            self._boxes.discard(box)
            with anyio.CancelScope(shield=True):
                await box.aclose()
            await self._add()
        else:
            self._ready_send.send_nowait(box)
        finally:
            self._resetting -= 1

    def stats(self) -> dict[str, int]:
        ready = self._ready.statistics().current_buffer_used
        return {"ready": ready, "busy": self._busy, "resetting": self._resetting}
