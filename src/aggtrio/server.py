"""The gRPC service (purerpc on trio): one broadcast subscriber per client stream.

purerpc's own `Server` cannot bind a host, logs WARNINGs for ordinary client disconnects and
answers unexpected errors with their repr (STACK.md); its protocol layer also ignores a
client's RST_STREAM. So we open the listener ourselves and run our own connection handler
over purerpc's protocol classes, which also ends a call when its client cancels it; purerpc
is pinned for that.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import anyio.abc
import h2.events
import h2.exceptions
import purerpc
import trio
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import GRPCStreamState
from purerpc.grpclib.connection import GRPCConfiguration
from purerpc.grpclib.events import RequestReceived
from purerpc.grpclib.exceptions import GRPCError, RpcFailedError
from purerpc.grpclib.status import Status, StatusCode
from purerpc.rpc import Cardinality
from purerpc.wrappers import (
    call_server_stream_stream,
    call_server_stream_unary,
    call_server_unary_stream,
    call_server_unary_unary,
)

from aggtrio._proto.orderbook_grpc import OrderbookAggregatorServicer
from aggtrio._proto.orderbook_pb2 import Empty, SummaryRequest
from aggtrio.aggregator import PublishedSummary
from aggtrio.broadcast import Broadcast, BroadcastClosedError
from aggtrio.symbols import InvalidSymbolError, normalize_symbol
from aggtrio.tls import HandshakeFailures, tls_listener

log = logging.getLogger(__name__)

# CPython collects its youngest generation after every 700 net allocations of container
# objects. One summary wakes every waiting stream handler at once, and waking a thousand
# allocates past that in one go, so at 1000 subscribers the collector ran ~80 times a
# second, each time walking the woken tasks: ~20 % of the server's CPU (measured with
# gc.callbacks), spent finding objects that were all still in use.
GC_YOUNGEST_THRESHOLD = 10_000

# Seconds between two log lines about refused streams (the ones in between are counted).
REFUSAL_LOG_INTERVAL = 10.0
# Seconds between two INFO lines counting the streams opened and closed meanwhile: each
# stream's own start and end is DEBUG, as a thousand clients reconnecting would flood INFO.
STREAM_REPORT_INTERVAL = 60.0

# What a vanished client looks like from the server side; none of it is worth a warning.
_DISCONNECTS: tuple[type[BaseException], ...] = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    ConnectionError,
    h2.exceptions.StreamClosedError,
    h2.exceptions.NoSuchStreamError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)
_CLIENT_PROTOCOL_ERRORS: tuple[type[BaseException], ...] = (h2.exceptions.H2Error, GRPCError)


class OrderbookService(OrderbookAggregatorServicer):
    """Streams each symbol's merged book: the latest summary at once, then every change.

    A quiet symbol's latest summary is published again every resend interval
    (`Broadcast.resend_when_quiet`, run by the app), so it reaches every stream too. That
    lets clients treat silence beyond the interval as a dead connection, and is the
    backstop for dead streams on a quiet symbol: purerpc sees that a stream is gone only
    when it writes to it (STACK.md). ConnectionHandler ends calls on RST_STREAM and on a
    closed connection itself; without writes, anything that slips past it (a reset read in
    the same batch as the request, before the call was running) would hold its slot
    forever. It is the same shared object, bytes and `arrival_time` included, so it costs
    no encoding; clients tell it from a change by the unchanged `arrival_time`.

    At most `max_streams` streams run at once, over both RPCs and all symbols: each costs
    the server a task and a share of every publish, so the limit bounds both memory and
    fan-out time. Beyond it a stream ends at once with RESOURCE_EXHAUSTED.
    """

    def __init__(
        self,
        broadcasts: Mapping[str, Broadcast[PublishedSummary]],
        default_symbol: str,
        *,
        max_streams: int = 1000,
    ) -> None:
        self._broadcasts = broadcasts
        self._default_symbol = default_symbol
        self._max_streams = max_streams
        self._open_streams = 0
        self._refused = 0
        self._next_refusal_log = -math.inf
        # Since the last report_streams line.
        self._opened = 0
        self._closed = 0

    @property
    def open_streams(self) -> int:
        """Client streams running now (a slot is taken until the handler has ended)."""
        return self._open_streams

    @property
    def max_streams(self) -> int:
        return self._max_streams

    # The generated base declares coroutines; purerpc streams whatever async generator we return.
    async def BookSummary(  # type: ignore[override]
        self, message: Empty
    ) -> AsyncIterator[PublishedSummary]:
        # aclosing: when purerpc closes this generator, the inner one must end (and free its
        # slot) now, not whenever the garbage collector finalizes it.
        async with aclosing(self._stream(self._default_symbol)) as summaries:
            async for summary in summaries:
                yield summary

    async def BookSummaryForSymbol(  # type: ignore[override]
        self, message: SummaryRequest
    ) -> AsyncIterator[PublishedSummary]:
        try:
            symbol = normalize_symbol(message.symbol)
        except InvalidSymbolError as exc:
            raise purerpc.InvalidArgumentError(str(exc)) from None
        if symbol not in self._broadcasts:
            served = ", ".join(self._broadcasts)
            raise purerpc.NotFoundError(f"symbol {symbol!r} is not served; served: {served}")
        async with aclosing(self._stream(symbol)) as summaries:
            async for summary in summaries:
                yield summary

    async def _stream(self, symbol: str) -> AsyncGenerator[PublishedSummary, None]:
        if self._open_streams >= self._max_streams:
            raise self._refuse()
        broadcast = self._broadcasts[symbol]
        self._open_streams += 1
        self._opened += 1
        started = trio.current_time()
        sent = 0
        log.debug("stream opened: %s, %d open", symbol, self._open_streams)
        try:
            seen = 0
            with broadcast.subscription():
                while True:
                    try:
                        seen, summary = await broadcast.next_after(seen)
                    except BroadcastClosedError:
                        raise purerpc.UnavailableError("server is shutting down") from None
                    sent += 1
                    yield summary
        finally:
            self._open_streams -= 1
            self._closed += 1
            log.debug(
                "stream closed: %s after %.1f s and %d messages, %d open",
                symbol,
                trio.current_time() - started,
                sent,
                self._open_streams,
            )

    async def report_streams(self, interval: float = STREAM_REPORT_INTERVAL) -> None:
        """Every `interval` seconds in which streams opened or closed, one INFO line with
        the counts: how busy the server is, and how close to --max-subscribers."""
        while True:
            await trio.sleep(interval)
            if self._opened or self._closed:
                log.info(
                    "client streams: %d open (limit %d); %d opened, %d closed in the last %g s",
                    self._open_streams,
                    self._max_streams,
                    self._opened,
                    self._closed,
                    interval,
                )
                self._opened = self._closed = 0

    def _refuse(self) -> purerpc.ResourceExhaustedError:
        # A client retrying in a loop must not flood the log: one line per interval at most.
        self._refused += 1
        now = trio.current_time()
        if now >= self._next_refusal_log:
            log.warning(
                "refused %d stream(s): all %d slots are taken (raise --max-subscribers)",
                self._refused,
                self._max_streams,
            )
            self._refused = 0
            self._next_refusal_log = now + REFUSAL_LOG_INTERVAL
        return purerpc.ResourceExhaustedError(
            f"the server is at its limit of {self._max_streams} concurrent streams; "
            "retry later, or have its operator raise the limit with --max-subscribers "
            "(environment variable AGGTRIO_MAX_SUBSCRIBERS)"
        )


def tune_gc() -> None:
    """Collect the youngest generation every GC_YOUNGEST_THRESHOLD allocations, not 700.

    For a process that serves streams; cyclic garbage still goes, a little later.
    """
    _youngest, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, middle, oldest)


def _only(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """True if `exc` (or every exception inside an exception group) is one of `kinds`."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(inner, kinds) for inner in exc.exceptions)
    return isinstance(exc, kinds)


class ConnectionHandler:
    """Serves gRPC calls on one accepted connection (replaces purerpc.server.ConnectionHandler)."""

    def __init__(self, services: Mapping[str, purerpc.Service]) -> None:
        self._services = services
        self._config = GRPCConfiguration(client_side=False)

    async def __call__(self, stream: anyio.abc.ByteStream) -> None:
        # Each running call's cancel scope, by HTTP/2 stream id, for RST_STREAM to cancel.
        running: dict[int, trio.CancelScope] = {}
        try:
            async with (
                GRPCProtoSocket(self._config, stream) as grpc_socket,
                anyio.create_task_group() as calls,
            ):
                _cancel_calls_on_reset(grpc_socket, running)
                async for call in grpc_socket.listen():
                    calls.start_soon(self._serve_call, grpc_socket, call, running)
                # The client closed the connection: none of its calls can be answered,
                # so end them now rather than at their next write.
                calls.cancel_scope.cancel()
        except BaseException as exc:
            if _only(exc, _DISCONNECTS):
                log.debug("client connection ended: %r", exc)
            elif _only(exc, _DISCONNECTS + _CLIENT_PROTOCOL_ERRORS):
                log.info("closed a client connection after a protocol error: %s", exc)
            elif isinstance(exc, Exception):
                log.exception("unexpected error on a client connection")
            else:
                raise
        finally:
            await stream.aclose()

    async def _serve_call(
        self,
        grpc_socket: GRPCProtoSocket,
        stream: GRPCProtoStream,
        running: dict[int, trio.CancelScope],
    ) -> None:
        stream_id: int = stream.stream_id
        with trio.CancelScope() as scope:
            running[stream_id] = scope
            try:
                await self._run_call(stream)
            finally:
                del running[stream_id]
        if scope.cancelled_caught:
            log.debug("client cancelled stream %d", stream_id)
        _forget_stream(grpc_socket, stream, reset=scope.cancelled_caught)

    async def _run_call(self, stream: GRPCProtoStream) -> None:
        method = "?"
        try:
            await stream.start_response()
            event = await stream.receive_event()
            if not isinstance(event, RequestReceived):
                await stream.close(Status(StatusCode.INTERNAL, status_message="expected headers"))
                return
            method = f"{event.service_name}/{event.method_name}"
            service = self._services.get(event.service_name)
            bound = service.methods.get(event.method_name) if service is not None else None
            if bound is None:
                await stream.close(
                    Status(StatusCode.UNIMPLEMENTED, status_message=f"{method} is not implemented")
                )
                return
            stream.expect_message_type(bound.signature.request_type)
            call = _CALLERS[bound.signature.cardinality]
            try:
                await call(functools.partial(bound.method_fn, request=event), stream)
            except RpcFailedError as error:
                await stream.close(error.status)
        except BaseException as exc:
            if _only(exc, _DISCONNECTS):
                log.debug("client went away during %s", method)
            elif isinstance(exc, Exception):
                log.exception("internal error in %s", method)
                await _close_quietly(stream, Status(StatusCode.INTERNAL, "internal server error"))
            else:
                raise


def _cancel_calls_on_reset(
    grpc_socket: GRPCProtoSocket, running: Mapping[int, trio.CancelScope]
) -> None:
    """End a call as soon as its client resets the stream (RST_STREAM: how grpcio cancels).

    purerpc 0.8 drops the reset, so the call would run until its next write failed; and a
    call blocked on a full flow-control window (a client that stopped reading, then
    cancelled) never writes again, so it would hold its slot until the connection closed.
    """

    def stream_reset(event: h2.events.StreamReset) -> list[Any]:
        scope = running.get(event.stream_id)
        if scope is not None:
            scope.cancel()
        return []  # like purerpc's own handler: no gRPC-level event

    grpc_socket._grpc_connection._stream_reset = stream_reset


def _forget_stream(grpc_socket: GRPCProtoSocket, stream: GRPCProtoStream, *, reset: bool) -> None:
    """Drop a finished call's stream from purerpc's table of the connection's streams.

    purerpc drops it only once both sides have closed it normally. A call that ended because
    its client reset it or stopped listening mid-response never closes its side, so on a
    long-lived connection whose client subscribes and cancels again and again the table
    would grow until the connection closed. No event can follow for such a stream: its
    request has ended (half-closed remote), or h2 reports nothing more after a reset.
    """
    if reset or stream.state is GRPCStreamState.HALF_CLOSED_REMOTE:
        grpc_socket._streams.pop(stream.stream_id, None)


async def _close_quietly(stream: GRPCProtoStream, status: Status) -> None:
    try:
        await stream.close(status)
    except Exception as exc:
        log.debug("could not send status %s: %r", status, exc)


_CALLERS: dict[Any, Any] = {
    Cardinality.UNARY_UNARY: call_server_unary_unary,
    Cardinality.UNARY_STREAM: call_server_unary_stream,
    Cardinality.STREAM_UNARY: call_server_stream_unary,
    Cardinality.STREAM_STREAM: call_server_stream_stream,
}


async def serve_grpc(
    servicers: Sequence[purerpc.Servicer],
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    tls_failures: HandshakeFailures | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port (port 0 picks a free one) and serve until cancelled.

    Reports the bound port through `task_status`. No SO_REUSEPORT unless `reuse_port` (the
    workers of `serve --workers`, which share the port on purpose): a second server on the
    same port must fail loudly, not silently take half the clients. With `ssl_context`,
    every connection is TLS; failed handshakes are counted in `tls_failures`.
    """
    tcp = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=reuse_port)
    bound_port: int = tcp.extra(anyio.abc.SocketAttribute.local_port)
    listener: anyio.abc.Listener[Any] = tcp
    if ssl_context is not None:
        listener = tls_listener(tcp, ssl_context, tls_failures or HandshakeFailures())
    task_status.started(bound_port)
    services = {servicer.service.name: servicer.service for servicer in servicers}
    async with listener:
        await listener.serve(ConnectionHandler(services))
