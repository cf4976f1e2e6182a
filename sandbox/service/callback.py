"""A submission's `callback_url`: its record POSTed there once judged, retried a few times when the receiver is
unreachable or failing.

Retried: connection errors, timeouts and 5xx (the receiver may be restarting).
Final: any other answer, 4xx included (the receiver refuses this body; sending
it again changes nothing).  After the last attempt the record is dropped: it
stays at GET /submissions/{id}.  Callers run this in a task of its own, so
the backoff never holds up judging.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx

ATTEMPTS = 4
FIRST_DELAY = 0.5  # seconds, doubled after each failed attempt (0.5, 1, 2)
TIMEOUT = 10.0


async def post(url: str, body: dict[str, Any]) -> bool:
    """Whether the receiver took the record (a 2xx or 3xx answer)."""
    delay = FIRST_DELAY
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for attempt in range(ATTEMPTS):
            if attempt:
                await anyio.sleep(delay)
                delay *= 2
            try:
                response = await client.post(url, json=body)
            except httpx.TransportError:  # refused, reset, timed out
                continue
            if response.status_code < 500:
                return response.status_code < 400
    return False
