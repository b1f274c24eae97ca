"""Opening a client WebSocket whose timeouts hold, on top of trio-websocket.

trio-websocket's `open_websocket_url` runs its reader in a nursery of its own and waits for
the opening handshake without looking at that reader. So a server that accepts TCP and
then resets it waits out the whole connect timeout, and one that accepts and never answers
hangs forever: the timeout fires, but the reader it started is never cancelled (both seen
against the simulators' `refuse()` and `stall()`). Here the reader lives in our nursery,
the handshake races the stream's end, and leaving always cancels the reader.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
import trio_websocket


class AbandonConnection(Exception):
    """Raised through `open_client_websocket` (or subclassed) to leave without a close
    handshake: the peer is unresponsive, so waiting for its close reply only delays us."""


def _abandons(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_abandons(inner) for inner in exc.exceptions)
    return isinstance(exc, AbandonConnection)


class HandshakeFailedError(Exception):
    """The server ended the connection before completing the WebSocket handshake."""


@attrs.frozen(slots=True)
class WebSocketTarget:
    host: str
    port: int
    resource: str
    secure: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> WebSocketTarget:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        secure = parts.scheme == "wss"
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or (443 if secure else 80), resource, secure)


class _WatchedStream(trio.abc.HalfCloseableStream):
    """Passes everything through; sets `ended` once the peer closes or breaks the stream."""

    def __init__(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        self._stream = stream
        self.ended = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise
        if not data:
            self.ended.set()
        return data

    async def send_eof(self) -> None:
        if isinstance(self._stream, trio.SocketStream):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _open_stream(
    target: WebSocketTarget,
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if target.secure:
        return await trio.open_ssl_over_tcp_stream(
            target.host,
            target.port,
            ssl_context=ssl.create_default_context(),
            https_compatible=True,
        )
    return await trio.open_tcp_stream(target.host, target.port)


@asynccontextmanager
async def open_client_websocket(
    url: str,
    *,
    connect_timeout: float,
    disconnect_timeout: float,
    message_queue_size: int,
    max_message_size: int,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """Connect (TCP, TLS, handshake) within `connect_timeout`; close within
    `disconnect_timeout` on the way out, and never leave a task behind.

    Raises trio.TooSlowError, OSError, HandshakeFailedError or trio-websocket's
    ConnectionRejected / HandshakeError when the connection cannot be made.
    """
    target = WebSocketTarget.parse(url)
    async with trio.open_nursery() as nursery:
        try:
            with trio.fail_after(connect_timeout):
                stream = _WatchedStream(await _open_stream(target))
                ws = await _handshake(nursery, stream, target, message_queue_size, max_message_size)
            try:
                yield ws
            except BaseException as exc:
                if not _abandons(exc):
                    with trio.move_on_after(disconnect_timeout):
                        await ws.aclose()
                raise
            with trio.move_on_after(disconnect_timeout):
                await ws.aclose()
        finally:
            nursery.cancel_scope.cancel()


async def _handshake(
    nursery: trio.Nursery,
    stream: _WatchedStream,
    target: WebSocketTarget,
    message_queue_size: int,
    max_message_size: int,
) -> trio_websocket.WebSocketConnection:
    """The opening handshake, abandoned as soon as the stream ends under it."""
    result: list[trio_websocket.WebSocketConnection] = []
    async with trio.open_nursery() as race:

        async def handshake() -> None:
            result.append(
                await trio_websocket.wrap_client_stream(
                    nursery,
                    # Typed as a socket or SSL stream, but only `.local`/`.remote` (unused
                    # here) need more than the Stream interface.
                    stream,  # type: ignore[arg-type]
                    target.host_header,
                    target.resource,
                    message_queue_size=message_queue_size,
                    max_message_size=max_message_size,
                    receive_buffer_size=None,
                )
            )
            race.cancel_scope.cancel()

        async def stream_ended() -> None:
            await stream.ended.wait()
            # A rejection (HTTP 4xx/5xx) also ends the stream: let the handshake report it.
            await trio.sleep(0.05)
            race.cancel_scope.cancel()

        race.start_soon(handshake)
        race.start_soon(stream_ended)
    if not result:
        await stream.aclose()
        raise HandshakeFailedError("connection closed during the WebSocket handshake")
    return result[0]
