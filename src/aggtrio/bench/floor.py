"""The floors: the least our stack can do, measured beside aggtrio in the same run.

``relay`` (latency floor): receives each venue WebSocket message the way the feed does
(our `open_client_websocket`, the feed's queue and size limits), stamps ``time.time_ns()``
right after the receive as ``arrival_time`` into a pre-built 10+10-level Summary,
serializes it and publishes it through our `Broadcast`. No parsing, no merging, no
liveness timer. Handlers only wait for the next value and yield it.

``stream`` (fan-out floor): every handler yields one pre-serialized Summary, the same
bytes for all, as fast as purerpc takes them, with one trio checkpoint per message as
aggtrio's handlers have (they wait for the next publish). Like aggtrio's, a stream starts
with one message; the rest flow once the ``go`` command came, so that all the streams of a
measurement can be opened first (a server sending flat out accepts connections slowly).

Both serve through aggtrio's own `ConnectionHandler` with the garbage collector tuned as
``aggtrio serve`` does, and implement only ``BookSummaryForSymbol``, the call the
benchmark's clients make. Run as
``python -m aggtrio.bench.floor relay --venue-url NAME=URL ...`` or ``... stream``; each
reports ``ready`` with its port and exits when its standard input closes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import trio

from aggtrio._proto.orderbook_grpc import OrderbookAggregatorServicer
from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.bench.child import commands, emit
from aggtrio.broadcast import Broadcast
from aggtrio.feed import CONNECT_TIMEOUT, DISCONNECT_TIMEOUT, MAX_MESSAGE_SIZE, MESSAGE_QUEUE_SIZE
from aggtrio.server import ConnectionHandler, tune_gc
from aggtrio.venues import ADAPTERS
from aggtrio.websocket import open_client_websocket

SYMBOL = "ETHBTC"


class Payload:
    """Bytes sent as they are: purerpc calls ``SerializeToString()`` on what handlers yield."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def SerializeToString(self) -> bytes:
        return self.payload


def reference_summary() -> Summary:
    """A Summary shaped like aggtrio's for ETHBTC: 10 bids, 10 asks, two venues."""
    summary = Summary(spread=0.000002, live_exchanges=["binance", "bitstamp"])
    for index in range(10):
        exchange = ("binance", "bitstamp")[index % 2]
        summary.bids.add(exchange=exchange, price=0.035123 - index * 1e-6, amount=1.2345 + index)
        summary.asks.add(exchange=exchange, price=0.035125 + index * 1e-6, amount=2.3456 + index)
    summary.arrival_time = time.time_ns()
    return summary


class RelayServicer(OrderbookAggregatorServicer):
    def __init__(self, broadcast: Broadcast[Payload]) -> None:
        self._broadcast = broadcast

    async def BookSummaryForSymbol(  # type: ignore[override]
        self, message: Any
    ) -> AsyncIterator[Payload]:
        seen = 0
        while True:
            seen, payload = await self._broadcast.next_after(seen)
            yield payload


class StreamServicer(OrderbookAggregatorServicer):
    def __init__(self, payload: Payload) -> None:
        self._payload = payload
        self.go = trio.Event()

    async def BookSummaryForSymbol(  # type: ignore[override]
        self, message: Any
    ) -> AsyncIterator[Payload]:
        yield self._payload
        await self.go.wait()
        while True:
            await trio.lowlevel.checkpoint()
            yield self._payload


async def relay_venue(
    venue: str, base_url: str, template: Summary, broadcast: Broadcast[Payload]
) -> None:
    adapter = ADAPTERS[venue]((SYMBOL,), 10)  # only for its URL and subscribe messages
    async with open_client_websocket(
        adapter.connect_url(base_url),
        connect_timeout=CONNECT_TIMEOUT,
        disconnect_timeout=DISCONNECT_TIMEOUT,
        message_queue_size=MESSAGE_QUEUE_SIZE,
        max_message_size=MAX_MESSAGE_SIZE,
    ) as ws:
        for message in adapter.subscribe_messages():
            await ws.send_message(message)
        while True:
            await ws.get_message()
            template.arrival_time = time.time_ns()
            broadcast.publish(Payload(template.SerializeToString()))


async def run(mode: str, venue_urls: dict[str, str]) -> None:
    broadcast = Broadcast[Payload]()
    streamer = StreamServicer(Payload(reference_summary().SerializeToString()))
    servicer = RelayServicer(broadcast) if mode == "relay" else streamer
    service = servicer.service
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(listener.serve, ConnectionHandler({service.name: service}))
        if mode == "relay":
            template = reference_summary()
            for venue, url in venue_urls.items():
                nursery.start_soon(relay_venue, venue, url, template, broadcast)
        emit("ready", port=listener.extra(anyio.abc.SocketAttribute.local_port))
        async for command in commands():
            if command.get("cmd") == "go":
                streamer.go.set()
                emit("going")
            else:
                emit("error", message=f"unknown command {command}")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aggtrio.bench.floor")
    parser.add_argument("mode", choices=["relay", "stream"])
    parser.add_argument("--venue-url", action="append", default=[], metavar="NAME=URL")
    args = parser.parse_args()
    venue_urls = dict(text.split("=", 1) for text in args.venue_url)
    tune_gc()
    trio.run(run, args.mode, venue_urls)


if __name__ == "__main__":
    main()
