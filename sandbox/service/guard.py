"""What every HTTP request passes before the app: the bearer token, a bounded body, and one JSON 500 for anything
unexpected.

A plain ASGI middleware rather than Starlette's `@app.middleware("http")`,
which runs each request through an extra task and memory streams: on a
`/run` of /bin/true that was a fair part of the service's own cost.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse
from prometheus_client import Counter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse(message, status_code=status)  # go-judge's error body: a JSON string


class Guard:
    def __init__(self, app: App, *, token: str | None, open_paths: set[str], max_request: int,
                 rejected: Counter, errors: Counter) -> None:
        self.app, self.open_paths, self.max_request = app, open_paths, max_request
        self.expected = f"Bearer {token}".encode() if token is not None else None
        self.rejected, self.errors = rejected, errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await self._unread(scope, receive, refusal)
            await refusal(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:  # noqa: BLE001 - any failure is one JSON 500, counted, and the service goes on
            self.errors.inc()
            if started:
                raise
            await error(500, f"internal error: {type(e).__name__}: {e}")(scope, receive, send)

    async def _unread(self, scope: Scope, receive: Receive, refusal: JSONResponse) -> None:
        """The body of a refused request, which the app never reads: read up to twice `max_request` (so that a
        client still sending gets the answer, and its connection can take the next request), else the connection
        is closed after the answer (h11 cannot find the next request behind an unread body)."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is None and scope["method"] not in ("POST", "PUT"):
            return
        if length is not None and length.isdigit() and int(length) <= 2 * self.max_request:
            await _drain(receive)
        else:
            refusal.headers["connection"] = "close"

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in self.open_paths:
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                self.rejected.labels("unauthorized").inc()
                return error(401, "a bearer token is required (Authorization: Bearer TOKEN)")
        length = headers.get(b"content-length")
        if length is None and scope["method"] in ("POST", "PUT"):
            self.rejected.labels("no_length").inc()
            return error(411, "a request body needs a Content-Length")
        if length is not None and (not length.isdigit() or int(length) > self.max_request):
            self.rejected.labels("too_large").inc()
            return error(413, f"the request is larger than {self.max_request} bytes")
        return None


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return
