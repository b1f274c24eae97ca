"""Fault injection in the venue simulators, seen by a plain trio-websocket client.

Each test asserts what a client on the wire actually gets: a reset (1006), a close code, no
bytes at all, no data but answered pings, an error instead of an ack, a defective message.
Intervals are short and waits are bounded, so the module stays well under 15 s.
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

from aggtrio.simulator import (
    BinanceSimulator,
    BitstampSimulator,
    Injection,
    Market,
    SimBook,
    SimulatedVenue,
    run_chaos,
)
from aggtrio.simulator.faults import parse_fault, run_faults
from aggtrio.simulator.venue import GARBAGE_KINDS, MALFORMED_KINDS

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


@pytest.fixture(params=["binance", "bitstamp"])
def venue(request: pytest.FixtureRequest) -> SimulatedVenue:
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
    return isinstance(message, dict) and (
        message.get("event") == "data" or "lastUpdateId" in message.get("data", message)
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


def data_url(venue: SimulatedVenue, symbols: tuple[str, ...] = ("ethbtc",)) -> str:
    if isinstance(venue, BinanceSimulator):
        streams = "/".join(f"{symbol}@depth5@100ms" for symbol in symbols)
        return f"{venue.url}/stream?streams={streams}"
    return venue.url


async def subscribe(
    ws: WebSocketConnection, venue: SimulatedVenue, symbols: tuple[str, ...] = ("ethbtc",)
) -> Any:
    """Subscribe (Bitstamp; Binance subscribes by URL) and return the first data message."""
    if isinstance(venue, BitstampSimulator):
        for symbol in symbols:
            await send(ws, {"event": "bts:subscribe", "data": {"channel": f"order_book_{symbol}"}})
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


async def send_subscribe(ws: WebSocketConnection, venue: SimulatedVenue, symbol: str) -> None:
    """A live subscription request (acked on both venues)."""
    if isinstance(venue, BinanceSimulator):
        await send(ws, {"method": "SUBSCRIBE", "params": [f"{symbol}@depth5@100ms"], "id": 42})
    else:
        await send(ws, {"event": "bts:subscribe", "data": {"channel": f"order_book_{symbol}"}})


def is_ack(message: Any) -> bool:
    return message == {"result": None, "id": 42} or (
        message.get("event") == "bts:subscription_succeeded"
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


async def test_drop_connections_after_n_data_messages(binance: BinanceSimulator) -> None:
    async with (
        open_websocket_url(data_url(binance)) as ws,
        open_websocket_url(data_url(binance)) as spared,
    ):
        await recv_data(ws)
        await recv_data(spared)
        by_port = {c.stream.socket.getpeername()[1]: c for c in binance.open_clients()}
        assert not isinstance(ws.local, str)
        mine = by_port[ws.local.port]
        binance.drop_connections(after_messages=3)
        sent_before = mine.data_messages_sent
        async with open_websocket_url(data_url(binance)) as later:  # not open at drop time
            more, code = await read_until_closed(ws)
            received = 1 + more
            assert code == 1006
            # The other connection open at the time is dropped after 3 more messages, too.
            assert await close_code(spared) == 1006
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
        await send_subscribe(ws, venue, "btcusdt")
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
        assert venue.subscribe_requests == requests + 1
        assert await pong_within(ws, TIMEOUT)
        await recv_data(ws)


async def test_a_connection_made_while_stalled_completes_after_unstall(
    binance: BinanceSimulator,
) -> None:
    binance.stall()
    connected = trio.Event()

    async def connect() -> None:
        async with open_websocket_url(data_url(binance), connect_timeout=TIMEOUT) as ws:
            connected.set()
            await recv_data(ws)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        await wait_for(lambda: len(binance.connection_attempts_at) == 1)
        await trio.sleep(QUIET)
        assert not connected.is_set()
        binance.unstall()
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


@pytest.mark.parametrize("kind", [kind for kind in MALFORMED_KINDS if kind != "huge"])
async def test_send_malformed(venue: SimulatedVenue, kind: str) -> None:
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
            codes.append(await close_code(ws))

    async with open_websocket_url(data_url(venue), max_message_size=16 * 1024 * 1024) as big:
        await subscribe(big, venue)

        async def read_big() -> None:
            while not sizes or sizes[-1] < CLIENT_MAX_MESSAGE:
                sizes.append(len(await big.get_message()))

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(limited_client)
                await subscribed.wait()
                nursery.start_soon(read_big)
                await venue.send_malformed("huge")
        assert codes == [1009], "too big for the client: it closes"
        assert 8 * 1024 * 1024 <= sizes[-1] < 9 * 1024 * 1024
        assert venue.malformed_sent >= 1  # the refused copy may not count as written
        assert valid_data(orjson.dumps(await recv_data(big)).decode()), "big streams on"
        # The venue still accepts and serves new connections.
        async with open_websocket_url(data_url(venue)) as fresh:
            await subscribe(fresh, venue)


async def test_garbage_rate_spoils_that_fraction_of_data(nursery: trio.Nursery) -> None:
    binance = BinanceSimulator(Market(seed=13), seed=13, interval=0.005)
    await nursery.start(binance.serve)
    with pytest.raises(ValueError, match="between 0 and 1"):
        binance.garbage_rate(1.5)
    async with open_websocket_url(data_url(binance)) as ws:
        await recv_data(ws)
        binance.garbage_rate(0.5)
        kinds: list[bool] = []
        with trio.fail_after(5):
            while len(kinds) < 80:
                kinds.append(valid_data(await ws.get_message()))
        spoiled = kinds.count(False)
        assert 15 <= spoiled <= 65, spoiled
        assert binance.malformed_sent >= spoiled
        binance.garbage_rate(0)
        with trio.move_on_after(0.05):  # what was in flight
            while True:
                await ws.get_message()
        for _ in range(20):
            assert valid_data(await recv_raw(ws))
    assert "huge" not in GARBAGE_KINDS


# -- orderly reconnects and connection age -------------------------------------------------


async def request_reconnect(venue: SimulatedVenue) -> None:
    if isinstance(venue, BinanceSimulator):
        await venue.request_shutdown()
    else:
        assert isinstance(venue, BitstampSimulator)
        await venue.request_reconnect()


def is_notice(message: Any) -> bool:
    return message.get("stream") == "!serverShutdown" or message.get("event") == (
        "bts:request_reconnect"
    )


async def test_make_before_break_reconnect(venue: SimulatedVenue) -> None:
    """During the grace the old connection streams on and a new one is served; after it
    the venue closes the old one, and only that one."""
    async with open_websocket_url(data_url(venue)) as old:
        await subscribe(old, venue)
        await request_reconnect(venue)  # grace 0.5 s (fixtures)
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


async def test_binance_max_connection_age(nursery: trio.Nursery) -> None:
    venue = BinanceSimulator(Market(seed=12), interval=INTERVAL, max_connection_age=0.3)
    await nursery.start(venue.serve)
    with pytest.raises(ValueError, match="positive"):
        BinanceSimulator(Market(), max_connection_age=0)
    async with open_websocket_url(data_url(venue)) as ws:
        opened = trio.current_time()
        await recv_data(ws)
        assert await close_code(ws) == 1000
        assert 0.25 <= trio.current_time() - opened < 1.5
    async with open_websocket_url(data_url(venue)) as ws:  # a new connection starts afresh
        await recv_data(ws)
    assert venue.connections_total == 2


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


async def test_chaos_injects_and_heals(
    binance: BinanceSimulator, bitstamp: BitstampSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    bitstamp.garbage_rate(0.01)  # set before chaos: it must survive a chaos "garbage"

    async def client(venue: SimulatedVenue, task_status: trio.TaskStatus[None]) -> None:
        # Reads all the time, as a real client must: a trio-websocket client whose queue is
        # full when the venue resets it hangs in close (its reader is never woken).
        async with open_websocket_url(data_url(venue)) as ws:
            await subscribe(ws, venue)
            task_status.started()
            await read_until_closed(ws, within=math.inf)

    async with trio.open_nursery() as clients:
        await clients.start(client, binance)
        await clients.start(client, bitstamp)
        with caplog.at_level(logging.INFO, logger="aggtrio.simulator.chaos"):
            log = await run_chaos(
                [binance, bitstamp],
                random.Random(5),
                0.01,
                heal_after=(0.02, 0.06),
                count=40,
            )
        clients.cancel_scope.cancel()
    assert len(log) == 40
    assert all(isinstance(item, Injection) for item in log)
    kinds = {item.fault.split(":")[0].split("=")[0] for item in log}
    assert len(kinds) >= 7, kinds
    assert {item.venue for item in log} == {"binance", "bitstamp"}
    for item in log:
        assert item.healed_at is not None
        assert item.healed_at >= item.at + item.duration
    for name in ("binance", "bitstamp"):  # one chaos fault per venue at a time
        spans = sorted((i.at, i.healed_at) for i in log if i.venue == name and i.duration > 0)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end is not None
            assert start >= end
    lines = [r.getMessage() for r in caplog.records if r.name == "aggtrio.simulator.chaos"]
    assert len([line for line in lines if line.startswith("chaos: ")]) == 40
    # Healed: both venues serve normally again, and the earlier garbage rate is back.
    for venue in (binance, bitstamp):
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
