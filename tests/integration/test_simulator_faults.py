"""Fault injection in the venue simulators, seen by a plain trio-websocket client.

Each test asserts what a client on the wire actually gets: a reset (1006), a close code, no
bytes at all, no data but answered pings, an error instead of an ack, a defective message.
Faults every venue shows alike run against every registered simulator (the `venue` fixture),
with the service's own adapters as the client where the venues' messages differ; faults a
venue's protocol shapes run against the venues that have them (reconnect notices,
application heartbeats) or against one venue. Intervals are short and waits are bounded:
each test takes a few seconds at most.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from aggtrio.model import VenueBook
from aggtrio.simulator import (
    SIMULATORS,
    BinanceSimulator,
    BitstampSimulator,
    Injection,
    Market,
    SimBook,
    SimulatedVenue,
    run_chaos,
)
from aggtrio.simulator.bybit import BybitSimulator
from aggtrio.simulator.coinbase import CoinbaseSimulator
from aggtrio.simulator.delta import DeltaVenue
from aggtrio.simulator.faults import (
    ask_to_reconnect,
    parse_fault,
    reconnect_notice_class,
    run_faults,
)
from aggtrio.simulator.kraken import KrakenSimulator
from aggtrio.simulator.okx import OkxSimulator
from aggtrio.simulator.venue import GARBAGE_KINDS, MALFORMED_KINDS
from aggtrio.venues import ADAPTERS
from aggtrio.venues.base import MalformedMessageError, VenueAdapter, VenueError

INTERVAL = 0.02
TIMEOUT = 2.0
QUIET = 0.3  # how long "nothing arrives" is watched for
CLIENT_MAX_MESSAGE = 4 * 1024 * 1024  # the feed's limit

Message = str | bytes


@pytest.fixture
async def binance(nursery: trio.Nursery) -> BinanceSimulator:
    venue = BinanceSimulator(
        Market(seed=11), seed=11, interval=INTERVAL, updates_per_second=50.0, shutdown_grace=0.5
    )
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


@pytest.fixture
async def bitstamp(nursery: trio.Nursery) -> BitstampSimulator:
    venue = BitstampSimulator(
        Market(seed=11), seed=11, updates_per_second=100.0, reconnect_grace=0.5
    )
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


@pytest.fixture
async def kraken(nursery: trio.Nursery) -> KrakenSimulator:
    venue = KrakenSimulator(
        Market(seed=11), seed=11, updates_per_second=100.0, maintenance_grace=0.5
    )
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


@pytest.fixture
async def coinbase(nursery: trio.Nursery) -> CoinbaseSimulator:
    venue = CoinbaseSimulator(Market(seed=11), seed=11, updates_per_second=100.0)
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


@pytest.fixture
async def okx(nursery: trio.Nursery) -> OkxSimulator:
    venue = OkxSimulator(
        Market(seed=11), seed=11, updates_per_second=100.0, push_interval=0.02, notice_grace=0.5
    )
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


@pytest.fixture
async def bybit(nursery: trio.Nursery) -> BybitSimulator:
    venue = BybitSimulator(Market(seed=11), seed=11, updates_per_second=100.0)
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


# Every registered simulator, for the faults every venue shows the same way.
@pytest.fixture(params=list(SIMULATORS))
def venue(request: pytest.FixtureRequest) -> SimulatedVenue:
    venue: SimulatedVenue = request.getfixturevalue(request.param)
    return venue


# Venues that send whole books: each data message can be checked as a book on its own.
WHOLE_BOOK_VENUES = tuple(
    name
    for name, cls in SIMULATORS.items()
    if not (isinstance(cls, type) and issubclass(cls, DeltaVenue))
)


@pytest.fixture(params=WHOLE_BOOK_VENUES)
def whole_book_venue(request: pytest.FixtureRequest) -> SimulatedVenue:
    venue: SimulatedVenue = request.getfixturevalue(request.param)
    return venue


# -- helpers -------------------------------------------------------------------------------


async def send(ws: WebSocketConnection, message: object) -> None:
    await ws.send_message(orjson.dumps(message).decode())


async def recv_raw(ws: WebSocketConnection) -> Message:
    with trio.fail_after(TIMEOUT):
        return await ws.get_message()


async def recv(ws: WebSocketConnection) -> Any:
    return orjson.loads(await recv_raw(ws))


def is_data(message: Any) -> bool:
    """A book message (a whole book, a snapshot or a delta) of any of the six venues."""
    if not isinstance(message, dict):
        return False
    data = message.get("data", message)
    return (
        message.get("event") == "data"  # Bitstamp
        or (isinstance(data, dict) and "lastUpdateId" in data)  # Binance
        or (message.get("channel") == "book" and message.get("type") in ("snapshot", "update"))
        or message.get("channel") == "l2_data"  # Coinbase
        or ("action" in message and "data" in message)  # OKX
        or str(message.get("topic", "")).startswith("orderbook.")  # Bybit
    )


async def recv_data(ws: WebSocketConnection) -> Any:
    """The next data message, skipping acks and replies."""
    with trio.fail_after(TIMEOUT):
        while not is_data(message := await recv(ws)):
            pass
    return message


async def recv_where(ws: WebSocketConnection, predicate: Callable[[Any], bool]) -> Any:
    with trio.fail_after(TIMEOUT):
        while not predicate(message := await recv(ws)):
            pass
    return message


async def assert_silent(ws: WebSocketConnection, seconds: float = QUIET) -> None:
    with trio.move_on_after(seconds):
        message = await ws.get_message()
        pytest.fail(f"expected silence, got {message[:200]!r}")


async def read_until_closed(ws: WebSocketConnection, within: float = TIMEOUT) -> tuple[int, int]:
    """Read until the connection closes: how many messages came, and the close code."""
    count = 0
    with trio.fail_after(within):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                return count, exc.reason.code if exc.reason is not None else -1
            count += 1


async def close_code(ws: WebSocketConnection) -> int:
    """Read until the connection closes; the close code the client saw."""
    return (await read_until_closed(ws))[1]


async def drain(ws: WebSocketConnection, seconds: float) -> None:
    """Read whatever arrives for ``seconds`` (messages already in flight)."""
    with trio.move_on_after(seconds):
        while True:
            await ws.get_message()


async def pong_within(ws: WebSocketConnection, seconds: float) -> bool:
    """Whether a ping is answered in time. Reads (and drops) messages meanwhile: trio-
    websocket only gets to a pong queued behind messages once they are consumed."""
    answered = False

    async def discard() -> None:
        while True:
            await ws.get_message()

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(discard)
            await ws.ping()
            answered = True
            nursery.cancel_scope.cancel()
    return answered


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll a venue counter (plain attributes, no event to wait on)."""
    with trio.fail_after(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - polling state another task owns
            await trio.sleep(0.01)


def adapter_for(venue: SimulatedVenue, symbols: tuple[str, ...] = ("ethbtc",)) -> VenueAdapter:
    """The service's own adapter for `venue`: it knows each venue's URL and requests."""
    return ADAPTERS[venue.name]([symbol.upper() for symbol in symbols], 10)


def data_url(venue: SimulatedVenue, symbols: tuple[str, ...] = ("ethbtc",)) -> str:
    if isinstance(venue, BinanceSimulator):
        streams = "/".join(f"{symbol}@depth5@100ms" for symbol in symbols)
        return f"{venue.url}/stream?streams={streams}"
    return adapter_for(venue, symbols).connect_url(venue.url)


async def subscribe(
    ws: WebSocketConnection, venue: SimulatedVenue, symbols: tuple[str, ...] = ("ethbtc",)
) -> Any:
    """Subscribe (Binance subscribes by URL) and return the first data message."""
    for message in adapter_for(venue, symbols).subscribe_messages():
        await ws.send_message(message)
    return await recv_data(ws)


def book_of(message: Any) -> dict[str, Any]:
    """The part of a data message holding bids and asks, on either venue."""
    data: dict[str, Any] = message["data"]
    return data


def as_book(message: Any) -> SimBook:
    def side(levels: list[list[str]]) -> tuple[tuple[float, float], ...]:
        return tuple((float(p), float(q)) for p, q in levels)

    data = book_of(message)
    return SimBook(side(data["bids"]), side(data["asks"]))


def valid_data(message: Message) -> bool:
    """Everything a client may rely on in a data message, checked strictly."""
    if not isinstance(message, str) or len(message) > CLIENT_MAX_MESSAGE:
        return False
    try:
        parsed = orjson.loads(message)
        data = book_of(parsed)
        sides = [[(float(p), float(q)) for p, q in data[name]] for name in ("bids", "asks")]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return False
    if not all(
        isinstance(text, str) for name in ("bids", "asks") for lvl in data[name] for text in lvl
    ):
        return False
    bids, asks = sides
    numbers = [x for side in sides for level in side for x in level]
    return (
        bool(bids and asks)
        and all(math.isfinite(x) and x > 0 for x in numbers)
        and bids[0][0] < asks[0][0]
    )


async def until_invalid(ws: WebSocketConnection) -> Message | int:
    """The first message that is not a valid data message (or the close code, for huge)."""
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code if exc.reason is not None else -1
            if not valid_data(message):
                return message


async def handshake_reply(stream: trio.SocketStream) -> bytes | bytearray:
    """Start a handshake by hand; what the server answers first."""
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(TIMEOUT):
        return await stream.receive_some()


HEALTHY = (False, False, False, False, False, 0.0)


def faults_of(venue: SimulatedVenue) -> tuple[bool, bool, bool, bool, bool, float]:
    return (
        venue.stalled,
        venue.muted,
        venue.ignoring_heartbeats,
        venue.refusing,
        venue.rejecting_subscriptions,
        venue.garbage,
    )


async def send_subscribe(ws: WebSocketConnection, venue: SimulatedVenue, symbol: str) -> int:
    """A live subscription (acked on every venue); how many requests that took (Coinbase
    subscribes to its heartbeats channel too)."""
    if isinstance(venue, BinanceSimulator):
        await send(ws, {"method": "SUBSCRIBE", "params": [f"{symbol}@depth5@100ms"], "id": 42})
        return 1
    requests = adapter_for(venue, (symbol,)).subscribe_messages()
    for message in requests:
        await ws.send_message(message)
    return len(requests)


def is_ack(message: Any) -> bool:
    """A subscription ack of any of the six venues."""
    return message == {"result": None, "id": 42} or (
        message.get("event") in ("bts:subscription_succeeded", "subscribe")  # Bitstamp, OKX
        or (message.get("method") == "subscribe" and message.get("success") is True)  # Kraken
        or message.get("channel") == "subscriptions"  # Coinbase
        or (message.get("op") == "subscribe" and message.get("success") is True)  # Bybit
    )


def is_reply(message: Any) -> bool:
    """Bitstamp's answer to a heartbeat."""
    return message.get("event") == "bts:heartbeat"


# -- drop / close --------------------------------------------------------------------------


async def test_drop_connections_resets_now_and_keeps_listening(venue: SimulatedVenue) -> None:
    async with open_websocket_url(data_url(venue)) as ws:
        await subscribe(ws, venue)
        venue.drop_connections()
        assert await close_code(ws) == 1006, "an RST, not a close frame"
    assert venue.listening
    async with open_websocket_url(data_url(venue)) as ws:  # reconnecting works at once
        await subscribe(ws, venue)
    assert venue.connections_total == 2


async def data_until_closed(ws: WebSocketConnection) -> tuple[int, int]:
    """Read until the connection closes: how many data messages came, and the close code."""
    count = 0
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                return count, exc.reason.code if exc.reason is not None else -1
            count += is_data(orjson.loads(message))


async def test_drop_connections_after_n_data_messages(venue: SimulatedVenue) -> None:
    async with (
        open_websocket_url(data_url(venue)) as ws,
        open_websocket_url(data_url(venue)) as spared,
    ):
        await subscribe(ws, venue)
        await subscribe(spared, venue)
        by_port = {c.stream.socket.getpeername()[1]: c for c in venue.open_clients()}
        assert not isinstance(ws.local, str)
        mine = by_port[ws.local.port]
        venue.drop_connections(after_messages=3)
        sent_before = mine.data_messages_sent
        async with open_websocket_url(data_url(venue)) as later:  # not open at drop time
            more, code = await data_until_closed(ws)
            received = 1 + more
            assert code == 1006
            # The other connection open at the time is dropped after 3 more messages, too.
            assert await close_code(spared) == 1006
            await subscribe(later, venue)
            for _ in range(6):
                await recv_data(later)
    # The client saw exactly what was sent before the call, plus three.
    assert received == sent_before + 3
    assert mine.data_messages_sent == sent_before + 3


@pytest.mark.parametrize(("code", "reason"), [(1001, "going away"), (4000, "try again later")])
async def test_close_connections_sends_the_close_code(
    venue: SimulatedVenue, code: int, reason: str
) -> None:
    async with open_websocket_url(data_url(venue)) as ws:
        await subscribe(ws, venue)
        if code == 1001:
            await venue.close_connections()  # the defaults
        else:
            await venue.close_connections(code, reason)
        with trio.fail_after(TIMEOUT):
            while True:
                try:
                    await ws.get_message()
                except ConnectionClosed as exc:
                    closed = exc.reason
                    break
    assert closed is not None
    assert (closed.code, closed.reason) == (code, reason)
    await wait_for(lambda: venue.connections == 0)
    assert venue.listening


# -- stall / mute / heartbeats -------------------------------------------------------------


async def test_stall_sends_and_answers_nothing_but_keeps_the_socket(
    venue: SimulatedVenue,
) -> None:
    async with open_websocket_url(data_url(venue)) as ws:
        await subscribe(ws, venue)
        venue.stall()
        assert venue.stalled
        with trio.move_on_after(QUIET):  # drain what was in flight before the stall
            while True:
                await ws.get_message()
        requests = venue.subscribe_requests
        sent = await send_subscribe(ws, venue, "btcusdt")
        assert not await pong_within(ws, QUIET), "a stalled venue answers no ping"
        await assert_silent(ws)
        assert venue.subscribe_requests == requests, "nor reads what it is sent"

        # A new connection gets no handshake either, but is not refused. (The outer scope
        # matters: trio-websocket 0.12.2's connect_timeout never fires against a server
        # that accepts TCP and then says nothing.)
        with trio.move_on_after(QUIET) as attempt:
            async with open_websocket_url(data_url(venue)):
                pytest.fail("handshake completed on a stalled venue")
        assert attempt.cancelled_caught
        assert ws.closed is None, "the stalled connection is still open"
        assert venue.connections == 1
        assert venue.connections_refused == 0

        venue.unstall()
        # Everything held back flows again on the same socket: the ack, the pong, data.
        await recv_where(ws, is_ack)
        # Every request is read (Coinbase acks the first before it reads the second).
        await wait_for(lambda: venue.subscribe_requests == requests + sent)
        assert await pong_within(ws, TIMEOUT)
        await recv_data(ws)


async def test_a_connection_made_while_stalled_completes_after_unstall(
    venue: SimulatedVenue,
) -> None:
    venue.stall()
    connected = trio.Event()

    async def connect() -> None:
        async with open_websocket_url(data_url(venue), connect_timeout=TIMEOUT) as ws:
            connected.set()
            await subscribe(ws, venue)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        await wait_for(lambda: len(venue.connection_attempts_at) == 1)
        await trio.sleep(QUIET)
        assert not connected.is_set()
        venue.unstall()
    assert connected.is_set()


async def test_kill_and_drop_still_reset_a_stalled_connection(venue: SimulatedVenue) -> None:
    async with open_websocket_url(data_url(venue)) as ws:
        await subscribe(ws, venue)
        venue.stall()
        venue.drop_connections()
        assert await close_code(ws) == 1006
    venue.unstall()
    async with open_websocket_url(data_url(venue)) as ws:
        await subscribe(ws, venue)
        venue.stall()
        with trio.fail_after(TIMEOUT):
            await venue.kill()
        assert await close_code(ws) == 1006
    assert venue.connections == 0


async def test_binance_mute_stops_the_timer_not_the_connection(
    binance: BinanceSimulator,
) -> None:
    async with open_websocket_url(data_url(binance)) as ws:
        await recv_data(ws)
        binance.freeze()
        before = await recv_data(ws)
        assert await recv_data(ws) == before, "frozen: the same book every interval"
        binance.mute()
        await drain(ws, INTERVAL)
        await assert_silent(ws, 5 * INTERVAL)
        assert await pong_within(ws, TIMEOUT), "muted is still healthy: pings answered"
        await send(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@depth5@100ms"], "id": 7})
        assert await recv(ws) == {"result": None, "id": 7}
        await assert_silent(ws, 5 * INTERVAL)
        assert binance.book("BTCUSDT") is None
        binance.unmute()
        await recv_where(ws, lambda message: message.get("stream") == "btcusdt@depth5@100ms")
        assert binance.book("BTCUSDT") is not None


async def test_bitstamp_mute_is_quiet_but_healthy(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        bitstamp.mute()
        await send(ws, {"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}})
        assert (await recv(ws))["event"] == "bts:subscription_succeeded"
        await send(ws, {"event": "bts:heartbeat"})
        assert await recv(ws) == {
            "event": "bts:heartbeat",
            "channel": "",
            "data": {"status": "success"},
        }
        await assert_silent(ws)  # the book moves 100 times a second, yet nothing is sent
        assert bitstamp.book("ETHBTC") is None
        bitstamp.unmute()
        message = await recv_data(ws)
        # The book keeps moving: freeze it, take the last message sent, then compare.
        bitstamp.freeze()
        with trio.move_on_after(QUIET):
            while True:
                message = await recv_data(ws)
        assert bitstamp.book("ETHBTC") == as_book(message)


async def test_bitstamp_ignore_heartbeats_keeps_data_flowing(
    bitstamp: BitstampSimulator,
) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        await subscribe(ws, bitstamp)
        bitstamp.ignore_heartbeats()
        await send(ws, {"event": "bts:heartbeat"})
        with trio.move_on_after(QUIET):
            while True:
                assert (await recv(ws))["event"] == "data"
        assert bitstamp.heartbeats_ignored == 1
        assert await pong_within(ws, TIMEOUT)
        bitstamp.ignore_heartbeats(False)
        await send(ws, {"event": "bts:heartbeat"})
        await recv_where(ws, is_reply)


# -- refuse / reject -----------------------------------------------------------------------


async def test_refuse_resets_new_connections_and_records_attempts(
    venue: SimulatedVenue,
) -> None:
    async with open_websocket_url(data_url(venue)) as ws:
        await subscribe(ws, venue)
        venue.refuse()
        started = trio.current_time()
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", venue.port)
            with pytest.raises(trio.BrokenResourceError, match="reset"):
                await handshake_reply(stream)
            await stream.aclose()
        # trio-websocket itself only notices a reset during the handshake at its timeout.
        with pytest.raises(HandshakeError):
            async with open_websocket_url(data_url(venue), connect_timeout=QUIET):
                pass
        assert venue.connections_refused == 4
        assert len(venue.connection_attempts_at) == 5
        assert all(started <= at <= trio.current_time() for at in venue.connection_attempts_at[1:])
        assert venue.connection_attempts_at == sorted(venue.connection_attempts_at)
        await recv_data(ws)  # the open connection is untouched

        venue.refuse(status=503)  # the fast variant: an HTTP error clients see at once
        with trio.fail_after(TIMEOUT), pytest.raises(ConnectionRejected) as excinfo:
            async with open_websocket_url(data_url(venue)):
                pass
        assert excinfo.value.status_code == 503
        assert venue.connections_refused == 5

        venue.refuse(False)
        async with open_websocket_url(data_url(venue)) as again:
            await subscribe(again, venue)
    assert venue.connections_total == 2


async def test_rejected_subscriptions_give_the_adapter_an_error_and_no_data(
    venue: SimulatedVenue,
) -> None:
    """What the service's adapter sees of a rejected subscription: an error on the
    connection (or, where it subscribes by URL, a refused handshake), and no book."""
    adapter = adapter_for(venue)
    venue.reject_subscriptions()
    url = adapter.connect_url(venue.url)
    if not adapter.subscribe_messages():  # Binance: the streams are in the URL
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(url):
                pass
    else:
        async with open_websocket_url(url) as ws:
            for request in adapter.subscribe_messages():
                await ws.send_message(request)
            events: list[object] = []
            with trio.fail_after(TIMEOUT):
                while not any(isinstance(event, VenueError) for event in events):
                    events.extend(adapter.handle_message(await ws.get_message(), 1))
            with trio.move_on_after(QUIET):
                while True:
                    events.extend(adapter.handle_message(await ws.get_message(), 1))
            assert not any(isinstance(event, VenueBook) for event in events)
    assert venue.subscriptions_rejected >= 1
    venue.reject_subscriptions(False)
    async with open_websocket_url(url) as ws:
        for request in adapter.for_new_connection().subscribe_messages():
            await ws.send_message(request)
        await book_from(ws, adapter.for_new_connection())


def is_heartbeat_reply(message: Message) -> bool:
    """A venue's answer to its client's heartbeat (Bitstamp, Kraken, OKX, Bybit)."""
    if message in ("pong", b"pong"):  # OKX: plain text
        return True
    try:
        parsed = orjson.loads(message)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and (
        parsed.get("event") == "bts:heartbeat"
        or parsed.get("method") == "pong"
        or parsed.get("ret_msg") == "pong"
    )


# Venues whose clients send an application heartbeat (Binance and Coinbase have none).
@pytest.fixture(
    params=[name for name in SIMULATORS if ADAPTERS[name].heartbeat_interval is not None]
)
def heartbeat_venue(request: pytest.FixtureRequest) -> SimulatedVenue:
    venue: SimulatedVenue = request.getfixturevalue(request.param)
    return venue


async def test_ignore_heartbeats_keeps_data_flowing(heartbeat_venue: SimulatedVenue) -> None:
    venue = heartbeat_venue
    heartbeat = adapter_for(venue).heartbeat_message()
    assert heartbeat is not None
    async with open_websocket_url(data_url(venue)) as ws:
        await subscribe(ws, venue)
        venue.ignore_heartbeats()
        await ws.send_message(heartbeat)
        data = 0
        with trio.move_on_after(QUIET):
            while True:
                message = await ws.get_message()
                assert not is_heartbeat_reply(message)
                data += is_data(orjson.loads(message))
        assert data > 0, "data flows on"
        assert venue.heartbeats_ignored == 1
        assert await pong_within(ws, TIMEOUT), "WebSocket pings are still answered"
        venue.ignore_heartbeats(False)
        await ws.send_message(heartbeat)
        with trio.fail_after(TIMEOUT):
            while not is_heartbeat_reply(await ws.get_message()):
                pass


async def test_mute_sends_no_data_but_stays_healthy(venue: SimulatedVenue) -> None:
    """Muted, a venue sends no book data yet answers pings; unmuted, what the client
    follows (through the service's adapter) is the venue's book again."""
    adapter = adapter_for(venue)
    async with open_websocket_url(adapter.connect_url(venue.url)) as ws:
        for request in adapter.subscribe_messages():
            await ws.send_message(request)
        await book_from(ws, adapter)
        venue.mute()
        # Every message goes to the adapter: Coinbase numbers heartbeats and data together.
        with trio.move_on_after(QUIET):  # what was in flight
            while True:
                adapter.handle_message(await ws.get_message(), 1)
        pinged = False

        async def follow_quietly() -> None:
            while True:
                message = await ws.get_message()
                assert not is_data(orjson.loads(message)), "muted, yet data came"
                adapter.handle_message(message, 1)

        with trio.move_on_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow_quietly)
                await trio.sleep(QUIET)
                await ws.ping()
                pinged = True
                nursery.cancel_scope.cancel()
        assert pinged, "muted is still healthy: pings answered"
        venue.unmute()
        last = await book_from(ws, adapter)
        venue.freeze()
        with trio.move_on_after(QUIET):  # the venue's last changes still on their way
            while True:
                for event in adapter.handle_message(await ws.get_message(), 1):
                    if isinstance(event, VenueBook):
                        last = event
        held = venue.book("ETHBTC")
        assert held is not None
        assert (last.bids, last.asks) == (held.bids[:10], held.asks[:10])


async def test_bitstamp_reject_subscriptions(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        await subscribe(ws, bitstamp, ("btcusdt",))
        bitstamp.reject_subscriptions()
        await send(ws, {"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}})
        error = await recv_where(ws, lambda message: message["event"] != "data")
        assert error["event"] == "bts:error"
        assert set(error) == {"event", "channel", "data"}
        assert error["data"]["code"] is None
        assert "rejected" in error["data"]["message"].lower()
        assert bitstamp.subscriptions_rejected == 1
        # The old subscription streams on; the rejected one sends nothing.
        channels = set()
        with trio.move_on_after(QUIET):
            while True:
                channels.add((await recv(ws))["channel"])
        assert channels == {"order_book_btcusdt"}
        bitstamp.reject_subscriptions(False)
        await send(ws, {"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}})
        await recv_where(ws, lambda message: message["event"] == "bts:subscription_succeeded")


async def test_binance_reject_subscriptions(binance: BinanceSimulator) -> None:
    async with open_websocket_url(f"{binance.url}/ws") as ws:
        binance.reject_subscriptions()
        await send(ws, {"method": "SUBSCRIBE", "params": ["ethbtc@depth5@100ms"], "id": 5})
        reply = await recv(ws)
        assert set(reply) == {"error", "id"}
        assert reply["id"] == 5
        assert reply["error"]["code"] == 2
        assert reply["error"]["msg"].startswith("Invalid request")
        await assert_silent(ws, 5 * INTERVAL)
        with pytest.raises(ConnectionRejected) as excinfo:
            async with open_websocket_url(data_url(binance)):
                pass
        assert excinfo.value.status_code == 400
        assert binance.subscriptions_rejected == 2
        binance.reject_subscriptions(False)
        await send(ws, {"method": "SUBSCRIBE", "params": ["ethbtc@depth5@100ms"], "id": 6})
        assert await recv(ws) == {"result": None, "id": 6}
        async with open_websocket_url(data_url(binance)) as by_url:
            await recv_data(by_url)


# -- malformed messages --------------------------------------------------------------------


def check_defect(kind: str, message: Message, valid: Any) -> None:
    """``message`` is ``valid`` spoiled by exactly the defect ``kind`` names."""
    if kind == "binary-garbage":
        assert isinstance(message, bytes)
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(message)
        return
    assert isinstance(message, str)
    if kind == "invalid-json":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(message)
        assert message.startswith(orjson.dumps(valid).decode()[:10]), "a spoiled data message"
        return
    parsed = orjson.loads(message)
    assert set(parsed) == set(valid), "the envelope is the venue's own"
    data, good = book_of(parsed), book_of(valid)
    bids, asks = data.get("bids"), data.get("asks")
    if kind == "wrong-types":
        assert isinstance(bids, dict)
        assert asks
        assert all(isinstance(x, float) for level in asks for x in level)
    elif kind == "non-numeric":
        assert bids[0][0] == "abc"
        assert bids[1:] == good["bids"][1:]
    elif kind == "negative":
        assert float(bids[0][0]) < 0
        assert float(asks[0][1]) < 0
    elif kind == "nan":
        assert math.isnan(float(bids[0][0]))
        assert math.isinf(float(asks[0][1]))
    elif kind == "missing-fields":
        assert "asks" not in data
        assert bids == good["bids"]
    elif kind == "empty-book":
        assert bids == asks == []
    elif kind == "one-sided":
        assert bids == good["bids"]
        assert asks == []
    elif kind == "crossed":
        assert float(bids[0][0]) > float(asks[0][0])
        assert bids[1:] == good["bids"]
        assert asks == good["asks"]
    else:
        pytest.fail(f"no check for {kind}")


# Whole-book venues: the defect is read off the message itself, a whole book. What a delta
# venue's malformed message is, its adapter says (test_malformed_messages_are_refused...).
@pytest.mark.parametrize("kind", [kind for kind in MALFORMED_KINDS if kind != "huge"])
async def test_send_malformed(whole_book_venue: SimulatedVenue, kind: str) -> None:
    venue = whole_book_venue
    async with open_websocket_url(data_url(venue)) as ws:
        venue.freeze()  # Binance repeats one book, Bitstamp falls silent
        valid = await subscribe(ws, venue)
        await venue.send_malformed(kind)
        with trio.fail_after(TIMEOUT):
            while valid_data(message := await ws.get_message()):
                assert orjson.loads(message) == valid
        check_defect(kind, message, valid)
        assert venue.malformed_sent == 1
        assert venue.book("ETHBTC") == as_book(valid), "book() reports the last valid book"
        # The connection goes on serving valid data afterwards.
        if isinstance(venue, BitstampSimulator):
            venue.unfreeze()
        assert valid_data(orjson.dumps(await recv_data(ws)).decode())


async def book_from(ws: WebSocketConnection, adapter: VenueAdapter) -> VenueBook:
    """Read until `adapter` makes a book of what arrives (acks, snapshots, deltas)."""
    with trio.fail_after(TIMEOUT):
        while True:
            for event in adapter.handle_message(await ws.get_message(), 1):
                if isinstance(event, VenueBook):
                    return event


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
async def test_malformed_messages_are_refused_by_the_venues_adapter(
    venue: SimulatedVenue, kind: str
) -> None:
    """On every venue, each malformed kind is a message the service's adapter for it refuses
    (so a feed counts it rather than merging it), and the connection serves on."""
    adapter = adapter_for(venue)
    async with open_websocket_url(adapter.connect_url(venue.url)) as ws:
        for request in adapter.subscribe_messages():
            await ws.send_message(request)
        await book_from(ws, adapter)
        venue.freeze()  # nothing but the malformed message can be refused
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                # Read meanwhile: a Coinbase snapshot of its 1000 levels is 100s of KB.
                nursery.start_soon(venue.send_malformed, kind)
                while True:
                    try:
                        adapter.handle_message(await ws.get_message(), 1)
                    except MalformedMessageError:
                        break
        assert venue.malformed_sent == 1
        venue.unfreeze()
        await book_from(ws, adapter)


async def test_send_malformed_symbol_and_count(binance: BinanceSimulator) -> None:
    async with open_websocket_url(data_url(binance, ("ethbtc", "btcusdt"))) as ws:
        await recv_data(ws)
        await binance.send_malformed("empty-book", "BTC/USDT", count=3)
        empty: list[str] = []
        with trio.move_on_after(QUIET):
            while True:
                message = await recv(ws)
                if not message["data"]["bids"]:
                    empty.append(message["stream"])
        assert empty == ["btcusdt@depth5@100ms"] * 3
        assert binance.malformed_sent == 3
    with pytest.raises(ValueError, match="unknown malformed kind"):
        await binance.send_malformed("spicy")


async def test_a_huge_message_closes_a_limited_client_and_wedges_nothing(
    venue: SimulatedVenue,
) -> None:
    subscribed = trio.Event()
    codes: list[int] = []
    sizes: list[int] = []

    async def limited_client() -> None:
        # Like the feed: a 4 MiB limit, and the socket is closed once the message is refused.
        url = data_url(venue)
        async with open_websocket_url(url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
            await subscribe(ws, venue)
            subscribed.set()
            codes.append((await read_until_closed(ws, within=5 * TIMEOUT))[1])

    async with open_websocket_url(data_url(venue), max_message_size=16 * 1024 * 1024) as big:
        await subscribe(big, venue)

        async def read_big() -> None:
            while not sizes or sizes[-1] < CLIENT_MAX_MESSAGE:
                sizes.append(len(await big.get_message()))

        # Building and sending 8 MiB in a venue's own envelope takes a good fraction of a
        # second, several on a busy machine; a wedged venue would take forever.
        with trio.fail_after(5 * TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(limited_client)
                await subscribed.wait()
                nursery.start_soon(read_big)
                await venue.send_malformed("huge")
        assert codes == [1009], "too big for the client: it closes"
        assert 8 * 1024 * 1024 <= sizes[-1] < 9 * 1024 * 1024
        assert venue.malformed_sent >= 1  # the refused copy may not count as written
        data = await recv_data(big)  # big streams on
        if venue.name in WHOLE_BOOK_VENUES:
            assert valid_data(orjson.dumps(data).decode())
        # The venue still accepts and serves new connections.
        async with open_websocket_url(data_url(venue)) as fresh:
            await subscribe(fresh, venue)


async def test_garbage_rate_spoils_that_fraction_of_data(venue: SimulatedVenue) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        venue.garbage_rate(1.5)
    adapter = adapter_for(venue)

    def refused(message: Message) -> bool:
        try:
            adapter.handle_message(message, 1)
        except MalformedMessageError:
            return True
        return False

    async with open_websocket_url(adapter.connect_url(venue.url)) as ws:
        for request in adapter.subscribe_messages():
            await ws.send_message(request)
        await book_from(ws, adapter)
        venue.garbage_rate(0.5)
        spoiled = data = 0
        # Normally 1-2 s; a busy machine can starve this process for seconds.
        with trio.fail_after(15):
            while spoiled + data < 60:
                message = await ws.get_message()
                if refused(message):
                    spoiled += 1
                else:  # a data message, or a heartbeat (not counted)
                    data += is_data(orjson.loads(message))
        assert 10 <= spoiled <= 50, spoiled
        assert venue.malformed_sent >= spoiled
        venue.garbage_rate(0)
        # Spoiled messages already sent may still be on their way (a busy machine delays
        # them past any fixed drain time), but no new one may come: those counted, and the
        # one this connection may be in the middle of sending (counted once written).
        produced = venue.malformed_sent + 1
        clean = 0
        with trio.fail_after(TIMEOUT):
            while clean < 20:
                message = await recv_raw(ws)
                if refused(message):
                    spoiled += 1
                    assert spoiled <= produced, "spoiled after the garbage rate was 0"
                else:
                    clean += is_data(orjson.loads(message))
    assert "huge" not in GARBAGE_KINDS


# -- orderly reconnects and connection age -------------------------------------------------


def is_notice(message: Any) -> bool:
    """A venue's reconnect notice: Binance's serverShutdown, Bitstamp's request_reconnect,
    Kraken's maintenance status (which its adapter reports, not acts on), OKX's notice."""
    data = message.get("data")
    return (
        message.get("stream") == "!serverShutdown"
        or message.get("event") in ("bts:request_reconnect", "notice")
        or (
            message.get("channel") == "status"
            and isinstance(data, list)
            and data[0].get("system") == "maintenance"
        )
    )


# Coinbase and Bybit announce nothing before they close (the close tests cover that).
@pytest.fixture(params=[name for name, cls in SIMULATORS.items() if reconnect_notice_class(cls)])
def notice_venue(request: pytest.FixtureRequest) -> SimulatedVenue:
    venue: SimulatedVenue = request.getfixturevalue(request.param)
    return venue


async def test_make_before_break_reconnect(notice_venue: SimulatedVenue) -> None:
    """During the grace the old connection streams on and a new one is served; after it
    the venue closes the old one, and only that one."""
    venue = notice_venue
    async with open_websocket_url(data_url(venue)) as old:
        await subscribe(old, venue)
        await ask_to_reconnect(venue)  # grace 0.5 s (fixtures)
        asked_at = trio.current_time()
        await recv_where(old, is_notice)
        async with open_websocket_url(data_url(venue)) as new:
            await subscribe(new, venue)
            await recv_data(old)  # the old connection still streams
            await recv_data(new)
            assert venue.connections == 2
            assert await close_code(old) == 1000
            assert trio.current_time() - asked_at >= 0.45
            for _ in range(3):
                await recv_data(new)
            assert new.closed is None
    assert venue.connections_total == 2


async def test_a_client_that_reads_nothing_holds_up_no_notice(
    bitstamp: BitstampSimulator,
) -> None:
    big = 16 * 1024 * 1024
    async with (
        open_websocket_url(bitstamp.url, max_message_size=big) as stuck,
        open_websocket_url(bitstamp.url) as reader,
    ):
        await subscribe(stuck, bitstamp)  # the only connection with a channel
        # Never read again: its one-message queue fills, its reader stops, and 24 MiB more
        # fill the socket buffers; the venue's next send on it blocks.
        started = trio.current_time()
        await bitstamp.send_malformed("huge", count=3, wait=1.0)
        assert trio.current_time() - started >= 1.0, "gave up waiting: the connection is stuck"
        assert bitstamp.malformed_sent == 0
        await send(reader, {"event": "bts:heartbeat"})
        await recv_where(reader, is_reply)
        with trio.fail_after(TIMEOUT):
            await bitstamp.request_reconnect()
        assert await recv(reader) == {"event": "bts:request_reconnect", "channel": "", "data": ""}
        assert await close_code(reader) == 1000
    await wait_for(lambda: bitstamp.connections == 0)


async def test_max_connection_age(venue: SimulatedVenue) -> None:
    venue.max_connection_age = 0.3  # as the max-connection-age fault sets it
    async with open_websocket_url(data_url(venue)) as ws:
        opened = trio.current_time()
        await subscribe(ws, venue)
        assert await close_code(ws) == 1000
        assert 0.25 <= trio.current_time() - opened < 1.5
    async with open_websocket_url(data_url(venue)) as ws:  # a new connection starts afresh
        await subscribe(ws, venue)
    assert venue.connections_total == 2


async def test_binance_max_connection_age_option(nursery: trio.Nursery) -> None:
    with pytest.raises(ValueError, match="positive"):
        BinanceSimulator(Market(), max_connection_age=0)
    venue = BinanceSimulator(Market(seed=12), interval=INTERVAL, max_connection_age=0.3)
    assert venue.max_connection_age == 0.3


# -- reset ---------------------------------------------------------------------------------


async def test_reset_faults_heals_everything(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        await subscribe(ws, bitstamp)
        bitstamp.drop_connections(after_messages=2)
        bitstamp.mute()
        bitstamp.ignore_heartbeats()
        bitstamp.refuse()
        bitstamp.reject_subscriptions()
        bitstamp.garbage_rate(1.0)
        bitstamp.stall()
        bitstamp.reset_faults()
        assert faults_of(bitstamp) == HEALTHY
        for _ in range(5):  # the pending drop is cancelled, and no garbage
            assert valid_data(orjson.dumps(await recv_data(ws)).decode())
        await send(ws, {"event": "bts:heartbeat"})
        await recv_where(ws, is_reply)
        async with open_websocket_url(bitstamp.url) as new:
            await subscribe(new, bitstamp)
    assert bitstamp.malformed_sent == 0


# -- command-line faults and chaos ---------------------------------------------------------


async def test_run_faults_switches_and_timed_faults(
    nursery: trio.Nursery, binance: BinanceSimulator, bitstamp: BitstampSimulator
) -> None:
    venues: dict[str, SimulatedVenue] = {"binance": binance, "bitstamp": bitstamp}
    specs = [
        "binance:garbage=0.25",
        "binance:refuse-for=0.2",
        "binance:max-connection-age=30",
        "bitstamp:ignore-heartbeats",
        "bitstamp:reject-subscriptions",
        "bitstamp:close-every=0.2",
    ]
    await nursery.start(run_faults, venues, [parse_fault(spec, venues) for spec in specs])
    assert binance.garbage == 0.25
    assert binance.refusing
    assert binance.max_connection_age == 30
    assert bitstamp.ignoring_heartbeats
    assert bitstamp.rejecting_subscriptions
    async with open_websocket_url(bitstamp.url) as ws:
        assert await close_code(ws) == 1001  # close-every
    await wait_for(lambda: not binance.refusing)  # refuse-for is over
    assert not bitstamp.muted
    assert not binance.stalled


@pytest.mark.parametrize(
    ("spec", "seen"),
    [
        ("drop-every=0.1", close_code),
        ("reconnect-every=0.1", lambda ws: recv_where(ws, is_notice)),
        ("malformed-every=0.1", until_invalid),
    ],
)
async def test_run_faults_repeating_events(
    nursery: trio.Nursery, binance: BinanceSimulator, spec: str, seen: Any
) -> None:
    venues: dict[str, SimulatedVenue] = {"binance": binance}
    async with open_websocket_url(data_url(binance), max_message_size=CLIENT_MAX_MESSAGE) as ws:
        await recv_data(ws)
        await nursery.start(run_faults, venues, [parse_fault(f"binance:{spec}", venues)])
        result = await seen(ws)
    if spec.startswith("drop"):
        assert result == 1006


async def test_run_faults_stall_after(nursery: trio.Nursery, bitstamp: BitstampSimulator) -> None:
    venues: dict[str, SimulatedVenue] = {"bitstamp": bitstamp}
    await nursery.start(run_faults, venues, [parse_fault("bitstamp:stall-after=0.1", venues)])
    assert not bitstamp.stalled
    await wait_for(lambda: bitstamp.stalled)


@pytest.fixture
async def every_venue(
    *,
    binance: BinanceSimulator,
    bitstamp: BitstampSimulator,
    kraken: KrakenSimulator,
    coinbase: CoinbaseSimulator,
    okx: OkxSimulator,
    bybit: BybitSimulator,
) -> dict[str, SimulatedVenue]:
    venues: dict[str, SimulatedVenue] = {
        venue.name: venue for venue in (binance, bitstamp, kraken, coinbase, okx, bybit)
    }
    assert set(venues) == set(SIMULATORS), "a venue without a fixture here"
    return venues


async def test_chaos_injects_and_heals(
    every_venue: dict[str, SimulatedVenue], caplog: pytest.LogCaptureFixture
) -> None:
    venues = every_venue
    bitstamp = venues["bitstamp"]
    bitstamp.garbage_rate(0.01)  # set before chaos: it must survive a chaos "garbage"

    async def client(venue: SimulatedVenue, task_status: trio.TaskStatus[None]) -> None:
        # Reads all the time, as a real client must: a trio-websocket client whose queue is
        # full when the venue resets it hangs in close (its reader is never woken).
        async with open_websocket_url(data_url(venue)) as ws:
            await subscribe(ws, venue)
            task_status.started()
            await read_until_closed(ws, within=math.inf)

    async with trio.open_nursery() as clients:
        for venue in venues.values():
            await clients.start(client, venue)
        with caplog.at_level(logging.INFO, logger="aggtrio.simulator.chaos"):
            log = await run_chaos(
                list(venues.values()),
                random.Random(5),
                0.01,
                heal_after=(0.02, 0.06),
                count=60,
            )
        clients.cancel_scope.cancel()
    assert len(log) == 60
    assert all(isinstance(item, Injection) for item in log)
    kinds = {item.fault.split(":")[0].split("=")[0] for item in log}
    assert len(kinds) >= 7, kinds
    assert {item.venue for item in log} == set(venues)
    # Each venue only gets what it can show: a reconnect notice where its protocol has one,
    # a broken sequence where it sends deltas, unanswered heartbeats where clients send them.
    for item in log:
        if item.fault == "ignore-heartbeats":
            assert ADAPTERS[item.venue].heartbeat_interval is not None, item
        if item.fault == "reconnect":
            assert reconnect_notice_class(type(venues[item.venue])), item
        if item.fault.startswith("sequence:"):
            assert isinstance(venues[item.venue], DeltaVenue), item
    for item in log:
        assert item.healed_at is not None
        assert item.healed_at >= item.at + item.duration
    for name in venues:  # one chaos fault per venue at a time
        spans = sorted((i.at, i.healed_at) for i in log if i.venue == name and i.duration > 0)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end is not None
            assert start >= end
    lines = [r.getMessage() for r in caplog.records if r.name == "aggtrio.simulator.chaos"]
    assert len([line for line in lines if line.startswith("chaos: ")]) == 60
    # Healed: every venue serves normally again, and the earlier garbage rate is back.
    for venue in venues.values():
        assert faults_of(venue)[:-1] == HEALTHY[:-1]
        async with open_websocket_url(data_url(venue)) as ws:
            await subscribe(ws, venue)
    assert bitstamp.garbage == 0.01


async def test_cancelled_chaos_heals_what_it_injected(binance: BinanceSimulator) -> None:
    async with trio.open_nursery() as nursery:
        log: list[Injection] = await nursery.start(
            lambda task_status: run_chaos(
                [binance],
                random.Random(1),
                0.01,
                heal_after=(60.0, 60.0),
                task_status=task_status,
            )
        )
        await wait_for(lambda: any(item.healed_at is None for item in log))
        assert faults_of(binance) != HEALTHY or log[-1].fault == "reconnect"
        nursery.cancel_scope.cancel()
    assert faults_of(binance) == HEALTHY


async def garbage_from(url: str) -> Message:
    """The first message on a new connection, which garbage=1 makes malformed; retried while
    chaos gets in the way (a stall, an outage, a close, its own garbage rate)."""
    with trio.fail_after(10):
        while True:
            with trio.move_on_after(1):  # bounds a connect to a stalled venue, too
                try:
                    async with open_websocket_url(url) as ws:
                        first = await ws.get_message()
                        if not valid_data(first):
                            return first
                except (ConnectionClosed, HandshakeError):
                    pass
            await trio.sleep(0.1)


async def test_simulate_command_applies_faults_and_chaos(nursery: trio.Nursery) -> None:
    """`aggtrio simulate --fault … --chaos …` as a user runs it, stopped with Ctrl-C."""
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "aggtrio",
            "simulate",
            "--venue",
            "binance=0",
            "--seed",
            "3",
            "--fault",
            "binance:garbage=1",
            "--chaos",
            "0.05",
        ],
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    changed = trio.Event()

    async def read_log() -> None:
        nonlocal changed
        assert process.stderr is not None
        buffer = b""
        async for chunk in process.stderr:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode(errors="replace") for line in complete)
            changed.set()
            changed = trio.Event()

    async def line_matching(pattern: str) -> re.Match[str]:
        with trio.fail_after(15):
            while True:
                for line in lines:
                    if match := re.search(pattern, line):
                        return match
                await changed.wait()

    nursery.start_soon(read_log)
    try:
        url = (await line_matching(r"simulated binance at (ws://\S+)")).group(1)
        assert await line_matching(r"fault: binance:garbage=1")
        assert await garbage_from(f"{url}/stream?streams=ethbtc@depth5@100ms")
        assert await line_matching(r"chaos: binance \S+")
    finally:
        process.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            await process.wait()
    assert process.returncode == 0, "\n".join(lines)
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], lines
