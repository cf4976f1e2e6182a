"""/run's answer: go-judge's results as JSON, written straight from the collected bytes, and a service-wide budget
for those bytes.

A collected file is held once, as the bytes the run produced (`Collected`),
and encoded into the response piece by piece: in JSON a NUL byte is six
(`\\u0000`), so a response built whole (a dict of decoded strings, then a
JSON string, then its bytes) takes up to fourteen times what the commands
printed.  A small answer is sent in one piece; a large one streams.

`OutputBudget` bounds what all requests together may have collected: each
takes what its collectors and copy-outs may bring back (their `max`) before
its commands run, in turn, and gives it back once its answer is sent.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio

from ..turns import Turns

CHUNK = 1 << 16
"""Bytes of collected output encoded at a time."""
STREAM_FROM = 1 << 20
"""Answers holding more collected bytes than this are streamed."""


@dataclass(frozen=True)
class Collected:
    """A collected file's bytes, sent as a JSON string (invalid UTF-8 as U+FFFD, as go-judge does)."""

    data: bytes


def collected_size(results: list[dict[str, Any]]) -> int:
    return sum(len(v.data) for r in results for v in (r.get("files") or {}).values() if isinstance(v, Collected))


def whole(results: list[dict[str, Any]]) -> bytes:
    """A small answer (collected bytes up to STREAM_FROM) in one piece, by the json module's C encoder."""
    return json.dumps(results, ensure_ascii=False, separators=(",", ":"),
                      default=lambda c: c.data.decode("utf-8", "replace")).encode()


def encode(value: Any) -> Iterator[bytes]:
    """`value` as JSON, in pieces of at most about CHUNK * 6 bytes."""
    if isinstance(value, Collected):
        yield from _text(value.data)
    elif isinstance(value, dict):
        yield b"{"
        for i, (key, item) in enumerate(value.items()):
            yield (b"," if i else b"") + json.dumps(key).encode() + b":"
            yield from encode(item)
        yield b"}"
    elif isinstance(value, list):
        yield b"["
        for i, item in enumerate(value):
            if i:
                yield b","
            yield from encode(item)
        yield b"]"
    else:
        yield json.dumps(value, ensure_ascii=False).encode()


def _text(data: bytes) -> Iterator[bytes]:
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    yield b'"'
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        part = decoder.decode(view[start:start + CHUNK], final=start + CHUNK >= len(data))
        yield json.dumps(part, ensure_ascii=False)[1:-1].encode()
    yield b'"'


async def stream(results: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The encoded pieces, a few at a time, letting other requests run between them."""
    batch: list[bytes] = []
    size = 0
    for piece in encode(results):
        batch.append(piece)
        size += len(piece)
        if size >= 4 * CHUNK:
            yield b"".join(batch)
            batch, size = [], 0
            await anyio.sleep(0)
    if batch:
        yield b"".join(batch)


class OutputBudget:
    """Bytes of collected output the service may hold at once, over all requests, taken in turn (turns.py)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._turns = Turns()

    async def take(self, n: int) -> None:
        """Wait until `n` bytes are free (n <= total: the caller checks)."""
        async with self._turns.first(lambda: self.free >= n):
            self.free -= n

    async def give(self, n: int) -> None:
        self.free += n
        await self._turns.changed()
