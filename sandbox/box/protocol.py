"""Messages between the supervisor, box init and the spawner: one per SOCK_SEQPACKET datagram, fds alongside.

SEQPACKET keeps message boundaries and delivers the fds with the message
they belong to, so no framing or fd bookkeeping is needed on either side.
The one-shot path and the FUSE fork server's client use the blocking half
(they have no event loop); the supervisor the async half, on anyio, so
that it runs under asyncio as well as trio.
"""

from __future__ import annotations

import array
import errno
import json
import os
import socket
from typing import Any

from ..errors import ConfigError

MAX_MESSAGE = 1 << 20
MAX_FDS = 8
_ANCBUF = socket.CMSG_SPACE(MAX_FDS * 4)

Message = dict[str, Any]


def _ancillary(fds: list[int]) -> list[tuple[int, int, bytes]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def _within_limit(data: bytes) -> bytes:
    if len(data) > MAX_MESSAGE:
        raise ConfigError(f"request of {len(data)} bytes is over the {MAX_MESSAGE}-byte limit (argv and environment)")
    return data


def _encode(msg: Message, fds: list[int]) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    return [_within_limit(json.dumps(msg).encode())], _ancillary(fds)


def _decode(data: bytes | bytearray, ancdata: list[tuple[int, int, bytes]], flags: int) -> tuple[Message, list[int]]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
            fds.extend(a)
    if not data:
        raise EOFError("peer closed the control socket")
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise ValueError("control message truncated")
    return json.loads(data), fds


def send(sock: socket.socket, msg: Message, fds: list[int] | None = None) -> None:
    sock.sendmsg(*_encode(msg, fds or []))


def recv(sock: socket.socket) -> tuple[Message, list[int]]:
    # (recvmsg allocates MAX_MESSAGE per message, ~15 us; a buffer kept for it would cost every start 0.7 ms to
    # zero, and the blocking side receives a few messages a box)
    data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE, _ANCBUF, socket.MSG_CMSG_CLOEXEC)
    return _decode(data, anc, flags)


class AsyncSocket:
    """A non-blocking socket awaited through anyio, for either event loop.

    anyio's socket streams cannot wrap a SOCK_SEQPACKET pair with fds passed
    alongside, so this does what they do underneath: try the call, and wait
    for readiness only when it would block.  `close` wakes a task waiting on
    the socket with anyio.ClosedResourceError.  The one-shot path imports
    this module, so anyio is imported only once a socket is waited on.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    async def sendmsg(self, buffers: list[bytes], ancdata: list[tuple[int, int, bytes]]) -> int:
        import anyio
        while True:
            try:
                return self._sock.sendmsg(buffers, ancdata)
            except BlockingIOError:
                await anyio.wait_writable(self._sock)

    async def recvmsg(self, size: int, ancsize: int, flags: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        import anyio
        while True:
            try:
                return self._sock.recvmsg(size, ancsize, flags)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)

    def getsockopt(self, level: int, name: int) -> int:
        return self._sock.getsockopt(level, name)

    def close(self) -> None:
        import anyio
        anyio.notify_closing(self._sock)
        self._sock.close()


async def asend(sock: AsyncSocket, msg: Message, fds: list[int] | None = None) -> None:
    await sock.sendmsg(*_encode(msg, fds or []))


def _tokens(tokens: list[str]) -> bytes:
    """The spawner's and the starter's request format: NUL-separated tokens, which C splits without a parser."""
    return _within_limit(os.fsencode("\0".join(tokens) + "\0"))


def _too_big(data: bytes, sndbuf: int) -> ConfigError:
    return ConfigError(f"request of {len(data)} bytes is over what the spawner's socket takes ({sndbuf} bytes: "
                       "net.core.wmem_max); pass long data through stdin or a file")


def send_tokens(sock: socket.socket, tokens: list[str], fds: list[int]) -> None:
    data = _tokens(tokens)
    try:
        sock.sendmsg([data], _ancillary(fds))
    except OSError as e:
        if e.errno != errno.EMSGSIZE:
            raise
        raise _too_big(data, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)) from None


async def asend_tokens(sock: AsyncSocket, tokens: list[str], fds: list[int]) -> None:
    data = _tokens(tokens)
    try:
        await sock.sendmsg([data], _ancillary(fds))
    except OSError as e:
        if e.errno != errno.EMSGSIZE:
            raise
        raise _too_big(data, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)) from None


async def arecv(sock: AsyncSocket) -> tuple[Message, list[int]]:
    data, anc, flags, _ = await sock.recvmsg(MAX_MESSAGE, _ANCBUF, socket.MSG_CMSG_CLOEXEC)
    return _decode(data, anc, flags)
