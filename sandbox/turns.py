"""Waiting in line for a shared resource that comes back in amounts: boxes of a pool, bytes of a budget.

A waiter that needs several units takes them all at once, when it is first
in line and they are there; it holds none while it waits, so two waiters can
never each hold part of what the other needs.  Later waiters queue behind it
(first come, first served), so a waiter for many is never starved by a
stream of waiters for one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio


class Turns:
    def __init__(self) -> None:
        self._line: deque[object] = deque()
        self._changed = anyio.Condition()

    @asynccontextmanager
    async def first(self, ready: Callable[[], bool]) -> AsyncIterator[None]:
        """Wait until this waiter is first in line and `ready()`; the block then takes what it needs, with no
        await in it (no other waiter runs in between).  With no one in line and enough there, it goes straight
        on: no lock, no pass through the event loop."""
        if not self._line and ready():
            yield
            return
        ticket = object()
        async with self._changed:
            self._line.append(ticket)
            try:
                while self._line[0] is not ticket or not ready():
                    await self._changed.wait()
            finally:
                self._line.remove(ticket)
                self._changed.notify_all()  # the next in line may be first, and ready, now
            yield

    async def changed(self) -> None:
        """Something came back: let the first in line look again (if there is a line)."""
        if not self._line:
            return
        async with self._changed:
            self._changed.notify_all()

    def __len__(self) -> int:
        return len(self._line)
