"""trio-websocket #184: closing with unread messages while a ping arrives must not stop a feed.

When our side closes, trio-websocket sends its close frame and then its reader answers any
ping that arrives before the venue's close reply; wsproto refuses a pong in that state, the
reader dies with LocalProtocolError, and `open_websocket` leaks a stray `trio.Cancelled`.
A reconnect loop that lets that Cancelled through silently stops (STACK.md).

The venue here is a few lines of raw wsproto, so it can do exactly what triggers the bug:
flood the connection (unread messages pile up) and answer our close frame with a ping
before its own close frame.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import attrs
import orjson
import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from aggtrio.feed import FeedState
from aggtrio.model import VenueBook, VenueDown
from aggtrio.venues.binance import BinanceAdapter

from .feeds import start_feed, wait_until

PING_FRAME = b"\x89\x00"  # FIN + opcode 9 (ping), empty unmasked payload: server to client
SHUTDOWN = '{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}'


def depth_message(n: int) -> str:
    data = {"lastUpdateId": n, "bids": [[f"{1.0 + n * 1e-6:.6f}", "1.0"]], "asks": [["2.0", "1.0"]]}
    return orjson.dumps({"stream": "ethbtc@depth20@100ms", "data": data}).decode()


@attrs.define
class PingOnCloseVenue:
    """Floods every connection with books; answers a client's close frame with a ping first."""

    connections: int = 0
    pings_on_close: int = 0
    # Per connection: an event that makes it send serverShutdown, and one that turns its
    # books into garbage.
    shutdown: list[trio.Event] = attrs.field(factory=list)
    garbage: list[trio.Event] = attrs.field(factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        index = self.connections
        self.connections += 1
        self.shutdown.append(trio.Event())
        self.garbage.append(trio.Event())
        ws = WSConnection(ConnectionType.SERVER)
        lock = trio.Lock()
        close: CloseConnection | None = None

        async def send(data: bytes) -> None:
            async with lock:
                await stream.send_all(data)

        async def flood() -> None:
            n = 0
            while True:
                n += 1
                text = "{not json" if self.garbage[index].is_set() else depth_message(n)
                await send(ws.send(TextMessage(text)))
                await trio.sleep(0.002)

        async def announce_shutdown() -> None:
            await self.shutdown[index].wait()
            await send(ws.send(TextMessage(SHUTDOWN)))

        try:
            async with trio.open_nursery() as nursery:
                while close is None:
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, Request):
                            await send(ws.send(AcceptConnection()))
                            nursery.start_soon(flood)
                            nursery.start_soon(announce_shutdown)
                        elif isinstance(event, CloseConnection):
                            close = event
                nursery.cancel_scope.cancel()
            if close is not None:
                await stream.send_all(PING_FRAME)
                self.pings_on_close += 1
                await trio.sleep(0.05)
                await stream.send_all(ws.send(close.response()))
        except trio.BrokenResourceError:
            pass  # the client went away first
        finally:
            await trio.aclose_forcefully(stream)


async def start_venue(nursery: trio.Nursery) -> tuple[PingOnCloseVenue, str]:
    venue = PingOnCloseVenue()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, venue.handle, 0))
    port = listeners[0].socket.getsockname()[1]
    return venue, f"ws://127.0.0.1:{port}"


async def wait_for_count(count: Callable[[], int], target: int) -> None:
    await wait_until(lambda: count() >= target)


async def test_this_venue_reproduces_the_bug_in_a_bare_client(nursery: trio.Nursery) -> None:
    """The fixture is faithful: a plain client that leaves `open_websocket_url` normally
    gets trio-websocket's stray Cancelled. If this fails, #184 is fixed upstream and the
    workaround in feed.py (`_why_connection_ended`) can be revisited."""
    venue, url = await start_venue(nursery)

    async def read_one_then_leave() -> None:
        async with trio_websocket.open_websocket_url(url, message_queue_size=16) as ws:
            await ws.get_message()
            await trio.sleep(0.05)  # let unread messages pile up

    with pytest.raises(trio.Cancelled, match="LOCAL_CLOSING"), trio.fail_after(5):
        await read_one_then_leave()
    assert venue.pings_on_close == 1


async def test_the_feed_survives_closing_into_a_ping_on_every_handover(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    venue, url = await start_venue(nursery)
    feed, receive = start_feed(nursery, BinanceAdapter(["ETHBTC"], 10), url)
    downs: list[VenueDown] = []

    async def drain() -> None:
        async for event in receive:
            if isinstance(event, VenueDown):
                downs.append(event)

    nursery.start_soon(drain)
    with trio.fail_after(10):
        for cycle in range(3):
            await wait_for_count(lambda: venue.connections, cycle + 1)
            await wait_until(lambda: feed.stats.state is FeedState.LIVE)
            venue.shutdown[cycle].set()  # we open the next connection, then close this one
            await wait_for_count(lambda: venue.pings_on_close, cycle + 1)
        await wait_until(lambda: venue.connections == 4 and feed.stats.state is FeedState.LIVE)
    assert downs == []  # every handover was make-before-break, bug or no bug
    messages = feed.stats.messages
    await trio.sleep(0.2)
    assert feed.stats.messages > messages  # still reading
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_feed_survives_recycling_a_garbage_connection_into_a_ping(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    venue, url = await start_venue(nursery)
    feed, receive = start_feed(nursery, BinanceAdapter(["ETHBTC"], 10), url)
    books = 0

    async def drain() -> None:
        nonlocal books
        async for event in receive:
            books += isinstance(event, VenueBook)

    nursery.start_soon(drain)
    with trio.fail_after(10):
        for cycle in range(3):
            await wait_for_count(lambda: venue.connections, cycle + 1)
            await wait_until(lambda: feed.stats.state is FeedState.LIVE)
            venue.garbage[cycle].set()  # past the garbage limit we close, the venue pings
            await wait_for_count(lambda: venue.pings_on_close, cycle + 1)
        await wait_until(lambda: venue.connections == 4 and feed.stats.state is FeedState.LIVE)
    assert feed.stats.garbage_recycles == 3
    seen = books
    await trio.sleep(0.2)
    assert books > seen
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
