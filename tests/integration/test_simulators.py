"""The venue simulators over real sockets, driven by a plain trio-websocket client.

These pin down the wire protocol the adapters rely on: paths, acks, message shapes,
string-encoded numbers, sorting, rates, errors, and outages (kill / restart / shutdown).
Intervals are shortened so the whole module stays fast.
"""

from __future__ import annotations

import re
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
    Market,
    SimBook,
    SimulatedVenue,
    run_simulators,
)
from aggtrio.venues import ADAPTERS

INTERVAL = 0.02
TIMEOUT = 2.0
DECIMAL = re.compile(r"^\d+\.\d{8}$")


async def recv(ws: WebSocketConnection) -> Any:
    with trio.fail_after(TIMEOUT):
        return orjson.loads(await ws.get_message())


async def recv_where(ws: WebSocketConnection, key: str) -> Any:
    """The next message carrying ``key`` (skipping data messages in between)."""
    with trio.fail_after(TIMEOUT):
        while True:
            message = orjson.loads(await ws.get_message())
            if key in message:
                return message


async def assert_silent(ws: WebSocketConnection, seconds: float) -> None:
    with trio.move_on_after(seconds):
        message = await ws.get_message()
        pytest.fail(f"expected silence, got {message!r}")


async def send(ws: WebSocketConnection, message: object) -> None:
    await ws.send_message(orjson.dumps(message).decode())


def check_book_side(
    levels: list[list[str]], *, descending: bool, decimals: re.Pattern[str]
) -> None:
    for level in levels:
        assert len(level) == 2
        assert all(isinstance(x, str) and decimals.match(x) for x in level), level
        assert float(level[1]) > 0
    prices = [float(price) for price, _ in levels]
    ordered = sorted(prices, reverse=descending)
    assert prices == ordered
    assert len(set(prices)) == len(prices)


def as_book(data: dict[str, Any]) -> SimBook:
    def side(levels: list[list[str]]) -> tuple[tuple[float, float], ...]:
        return tuple((float(p), float(q)) for p, q in levels)

    return SimBook(side(data["bids"]), side(data["asks"]))


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll a venue counter (they are plain attributes, no event to wait on)."""
    for _ in range(300):
        if predicate():
            return
        await trio.sleep(0.01)
    pytest.fail("condition not reached within 3 s")


async def close_code(ws: WebSocketConnection) -> int:
    """Read until the connection closes; the close code the client saw."""
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                return exc.reason.code if exc.reason is not None else -1


@pytest.fixture
async def binance(nursery: trio.Nursery) -> BinanceSimulator:
    venue = BinanceSimulator(
        Market(seed=7), seed=7, interval=INTERVAL, slow_interval=0.2, updates_per_second=50.0
    )
    await nursery.start(venue.serve)
    return venue


@pytest.fixture
async def bitstamp(nursery: trio.Nursery) -> BitstampSimulator:
    venue = BitstampSimulator(Market(seed=7), seed=7, updates_per_second=100.0)
    await nursery.start(venue.serve)
    return venue


# -- Binance -------------------------------------------------------------------------------


async def test_binance_combined_stream_shape_and_rate(binance: BinanceSimulator) -> None:
    url = f"{binance.url}/stream?streams=ethbtc@depth20@100ms"
    async with open_websocket_url(url) as ws:
        start = trio.current_time()
        update_ids = []
        for _ in range(10):
            message = await recv(ws)
            assert set(message) == {"stream", "data"}
            assert message["stream"] == "ethbtc@depth20@100ms"
            data = message["data"]
            assert set(data) == {"lastUpdateId", "bids", "asks"}
            assert isinstance(data["lastUpdateId"], int)
            assert len(data["bids"]) == 20
            assert len(data["asks"]) == 20
            check_book_side(data["bids"], descending=True, decimals=DECIMAL)
            check_book_side(data["asks"], descending=False, decimals=DECIMAL)
            assert float(data["bids"][0][0]) < float(data["asks"][0][0])
            assert 0.02 < float(data["bids"][0][0]) < 0.06
            update_ids.append(data["lastUpdateId"])
        elapsed = trio.current_time() - start
    # Sent on a fixed cadence, changed or not: never faster than the interval.
    assert elapsed >= 9 * INTERVAL * 0.95
    assert update_ids == sorted(update_ids)
    assert update_ids[-1] > update_ids[0]
    assert binance.connections_total == 1
    assert binance.subscribe_requests == 1


async def test_binance_depth_variants_and_slow_streams(binance: BinanceSimulator) -> None:
    streams = "btcusdt@depth5@100ms/btcusdt@depth10/ethbtc@depth20@100ms"
    async with open_websocket_url(f"{binance.url}/stream?streams={streams}") as ws:
        counts = {"btcusdt@depth5@100ms": 0, "btcusdt@depth10": 0, "ethbtc@depth20@100ms": 0}
        with trio.move_on_after(0.5):
            while True:
                message = await recv(ws)
                counts[message["stream"]] += 1
                data = message["data"]
                expected = {"btcusdt@depth5@100ms": 5, "btcusdt@depth10": 10}
                assert len(data["bids"]) == expected.get(message["stream"], 20)
                if message["stream"].startswith("btcusdt"):
                    assert 50_000 < float(data["asks"][0][0]) < 150_000
    # The stream without @100ms runs at the slow interval (0.2 s here).
    assert 1 <= counts["btcusdt@depth10"] <= 3
    assert counts["btcusdt@depth5@100ms"] >= 4 * counts["btcusdt@depth10"]
    assert counts["ethbtc@depth20@100ms"] >= 4 * counts["btcusdt@depth10"]


async def test_binance_raw_stream_sends_bare_payload(binance: BinanceSimulator) -> None:
    async with open_websocket_url(f"{binance.url}/ws/ethbtc@depth10@100ms") as ws:
        data = await recv(ws)
    assert set(data) == {"lastUpdateId", "bids", "asks"}
    assert len(data["bids"]) == len(data["asks"]) == 10


async def test_binance_live_subscribe_list_unsubscribe(binance: BinanceSimulator) -> None:
    async with open_websocket_url(f"{binance.url}/ws") as ws:
        await assert_silent(ws, 3 * INTERVAL)
        await send(ws, {"method": "SUBSCRIBE", "params": ["ethbtc@depth20@100ms"], "id": 1})
        assert await recv(ws) == {"result": None, "id": 1}, "the ack comes before any data"
        data = await recv(ws)
        assert len(data["bids"]) == 20

        await send(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@depth5@100ms"], "id": "two"})
        assert await recv_where(ws, "id") == {"result": None, "id": "two"}
        await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})
        assert await recv_where(ws, "id") == {
            "result": ["ethbtc@depth20@100ms", "btcusdt@depth5@100ms"],
            "id": 3,
        }

        await send(
            ws,
            {
                "method": "UNSUBSCRIBE",
                "params": ["ethbtc@depth20@100ms", "btcusdt@depth5@100ms"],
                "id": 4,
            },
        )
        assert await recv_where(ws, "id") == {"result": None, "id": 4}
        await assert_silent(ws, 4 * INTERVAL)
        await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 5})
        assert await recv(ws) == {"result": [], "id": 5}
    assert binance.subscribe_requests == 2


async def test_binance_combined_property(binance: BinanceSimulator) -> None:
    async with open_websocket_url(f"{binance.url}/ws") as ws:
        await send(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 1})
        assert await recv(ws) == {"result": False, "id": 1}
        await send(ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 2})
        assert await recv(ws) == {"result": None, "id": 2}
        await send(ws, {"method": "SUBSCRIBE", "params": ["ethbtc@depth5@100ms"], "id": 3})
        assert await recv(ws) == {"result": None, "id": 3}
        message = await recv(ws)
        assert message["stream"] == "ethbtc@depth5@100ms"
        assert set(message["data"]) == {"lastUpdateId", "bids", "asks"}


@pytest.mark.parametrize(
    ("request_text", "code", "request_id"),
    [
        ("{not json", 3, None),
        ('["SUBSCRIBE"]', 2, None),
        ('{"params": [], "id": 7}', 2, 7),
        ('{"method": "FROBNICATE", "id": 8}', 2, 8),
        ('{"method": "SUBSCRIBE", "params": ["ETHBTC@depth20"], "id": 9}', 2, 9),
        ('{"method": "SUBSCRIBE", "params": ["ethbtc@trade"], "id": 10}', 2, 10),
        ('{"method": "SUBSCRIBE", "params": [42], "id": 11}', 2, 11),
        ('{"method": "SUBSCRIBE", "params": "ethbtc@depth20", "id": 12}', 2, 12),
        ('{"method": "SUBSCRIBE", "params": [], "id": -1}', 2, None),
        ('{"method": "SET_PROPERTY", "params": ["colour", true], "id": 13}', 0, 13),
        ('{"method": "SET_PROPERTY", "params": ["combined", 1], "id": 14}', 1, 14),
    ],
)
async def test_binance_rejects_bad_requests(
    binance: BinanceSimulator, request_text: str, code: int, request_id: object
) -> None:
    async with open_websocket_url(f"{binance.url}/ws") as ws:
        await ws.send_message(request_text)
        reply = await recv(ws)
        assert set(reply) == {"error", "id"}
        assert reply["id"] == request_id
        assert reply["error"]["code"] == code
        assert isinstance(reply["error"]["msg"], str)
        assert reply["error"]["msg"]
        # The connection survives bad input and still serves.
        await send(ws, {"method": "SUBSCRIBE", "params": ["ethbtc@depth5@100ms"], "id": 99})
        assert await recv(ws) == {"result": None, "id": 99}
        assert len((await recv(ws))["bids"]) == 5


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 404),
        ("/api/v3/depth", 404),
        ("/stream?streams=ethbtc@trade", 400),
        ("/ws/ETHBTC@depth20", 400),
    ],
)
async def test_binance_rejects_unknown_paths(
    binance: BinanceSimulator, path: str, status: int
) -> None:
    with pytest.raises(ConnectionRejected) as excinfo:
        async with open_websocket_url(binance.url + path):
            pass
    assert excinfo.value.status_code == status
    assert binance.connections_total == 0


async def test_binance_book_is_what_was_last_sent(binance: BinanceSimulator) -> None:
    assert binance.book("ETHBTC") is None
    async with open_websocket_url(f"{binance.url}/ws/ethbtc@depth20@100ms") as ws:
        await recv(ws)
        binance.freeze()
        first = await recv(ws)
        second = await recv(ws)
        assert first == second, "a frozen venue repeats the same book and lastUpdateId"
        assert binance.book("ETHBTC") == as_book(second)
        assert binance.book("eth/btc") == as_book(second)
        binance.unfreeze()
        with trio.fail_after(2):
            while (await recv(ws))["lastUpdateId"] == second["lastUpdateId"]:
                pass


async def test_binance_pinned_book_is_sent_verbatim(binance: BinanceSimulator) -> None:
    async with open_websocket_url(f"{binance.url}/stream?streams=ethbtc@depth5@100ms") as ws:
        before = (await recv(ws))["data"]
        binance.set_book(
            "ETH/BTC",
            bids=[("0.03500000", "1.00000000"), (0.0349, 2)],
            asks=[("0.03510000", "3.5"), (0.0352, 0.25)],
        )
        data = (await recv(ws))["data"]
        assert data["bids"] == [["0.03500000", "1.00000000"], ["0.03490000", "2.00000000"]]
        assert data["asks"] == [["0.03510000", "3.5"], ["0.03520000", "0.25000000"]]
        assert data["lastUpdateId"] > before["lastUpdateId"]
        again = (await recv(ws))["data"]
        assert again == data, "a pinned book does not move"
        assert binance.book("ETHBTC") == SimBook(
            bids=((0.035, 1.0), (0.0349, 2.0)), asks=((0.0351, 3.5), (0.0352, 0.25))
        )
        binance.unpin("ETHBTC")
        moved = (await recv(ws))["data"]
        assert moved["lastUpdateId"] > data["lastUpdateId"]
        assert len(moved["bids"]) == 5


async def test_binance_set_book_rejects_unparseable_numbers(binance: BinanceSimulator) -> None:
    with pytest.raises(ValueError, match="could not convert"):
        binance.set_book("ETHBTC", bids=[("abc", "1")], asks=[])
    with pytest.raises(ValueError, match="finite"):
        binance.set_book("ETHBTC", bids=[(float("nan"), 1.0)], asks=[])


async def test_binance_disconnects_a_client_that_stops_answering_pings(
    nursery: trio.Nursery,
) -> None:
    venue = BinanceSimulator(Market(seed=1), interval=0.01, ping_interval=0.05, pong_timeout=0.2)
    venue.close_timeout = 0.2
    await nursery.start(venue.serve)
    # A reading client answers pings: it stays connected across several ping periods.
    async with open_websocket_url(f"{venue.url}/ws/ethbtc@depth5@100ms") as ws:
        with trio.move_on_after(0.5):
            while True:
                await recv(ws)
        assert venue.connections == 1
    await wait_for(lambda: venue.connections == 0)
    # A client that stops reading stops answering pings (STACK.md) and gets dropped.
    async with open_websocket_url(
        f"{venue.url}/ws/ethbtc@depth5@100ms", message_queue_size=1
    ) as ws:
        await wait_for(lambda: venue.connections == 1)
        await wait_for(lambda: venue.connections == 0)
        assert await close_code(ws) in (1000, 1006, 1008)


async def test_binance_server_shutdown_notice(binance: BinanceSimulator) -> None:
    binance.shutdown_grace = 0.1
    combined_url = f"{binance.url}/stream?streams=ethbtc@depth5@100ms"
    async with (
        open_websocket_url(combined_url) as combined,
        open_websocket_url(f"{binance.url}/ws/ethbtc@depth5@100ms") as raw,
    ):
        await recv(combined)
        await recv(raw)
        await wait_for(lambda: binance.connections == 2)
        await binance.request_shutdown()
        wrapped = await recv_where(combined, "stream")
        while wrapped["stream"] != "!serverShutdown":
            wrapped = await recv_where(combined, "stream")
        assert wrapped["data"]["e"] == "serverShutdown"
        assert isinstance(wrapped["data"]["E"], int)
        bare = await recv_where(raw, "e")
        assert bare == wrapped["data"]
        for ws in (combined, raw):
            assert await close_code(ws) == 1000


# -- Bitstamp ------------------------------------------------------------------------------


async def test_bitstamp_subscribe_ack_and_data_shape(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        await send(ws, {"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}})
        assert await recv(ws) == {
            "event": "bts:subscription_succeeded",
            "channel": "order_book_ethbtc",
            "data": {},
        }
        for _ in range(5):
            message = await recv(ws)
            assert set(message) == {"event", "channel", "data"}
            assert message["event"] == "data"
            assert message["channel"] == "order_book_ethbtc"
            data = message["data"]
            assert set(data) == {"timestamp", "microtimestamp", "bids", "asks"}
            assert data["timestamp"].isdigit()
            assert data["microtimestamp"].isdigit()
            assert int(data["microtimestamp"]) // 1_000_000 == int(data["timestamp"])
            assert len(data["bids"]) == len(data["asks"]) == 100
            check_book_side(data["bids"], descending=True, decimals=DECIMAL)
            check_book_side(data["asks"], descending=False, decimals=DECIMAL)
            assert float(data["bids"][0][0]) < float(data["asks"][0][0])
    assert bitstamp.subscribe_requests == 1


async def test_bitstamp_prices_use_the_pair_precision(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url + "/") as ws:
        await send(ws, {"event": "bts:subscribe", "data": {"channel": "order_book_btcusd"}})
        await recv(ws)
        data = (await recv(ws))["data"]
        assert re.match(r"^\d+$", data["bids"][0][0]), "BTC/USD trades in whole dollars"
        assert DECIMAL.match(data["bids"][0][1])


async def test_bitstamp_heartbeat_and_errors(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        await send(ws, {"event": "bts:heartbeat"})
        assert await recv(ws) == {
            "event": "bts:heartbeat",
            "channel": "",
            "data": {"status": "success"},
        }
        bad_json = {
            "event": "bts:error",
            "channel": "",
            "data": {"code": None, "message": "Incorrect JSON format."},
        }
        for text in ("{nope", "[1, 2]", '{"event": "bts:dance"}', '{"event": "bts:subscribe"}'):
            await ws.send_message(text)
            assert await recv(ws) == bad_json
        await ws.send_message(b"\xff\x00binary junk")
        assert await recv(ws) == bad_json
        for channel in ("order_book_", "live_trades_ethbtc", "order_book_ETHBTC"):
            await send(ws, {"event": "bts:subscribe", "data": {"channel": channel}})
            error = await recv(ws)
            assert error["event"] == "bts:error"
            assert error["data"]["code"] is None
            assert "subscription" in error["data"]["message"].lower()
        await send(ws, {"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}})
        assert (await recv(ws))["event"] == "bts:subscription_succeeded"
        assert (await recv(ws))["event"] == "data"


async def test_bitstamp_unsubscribe_stops_data(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        await send(ws, {"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}})
        await recv(ws)
        await recv(ws)
        await send(ws, {"event": "bts:unsubscribe", "data": {"channel": "order_book_ethbtc"}})
        with trio.fail_after(2):
            while (message := await recv(ws))["event"] == "data":
                pass
        assert message == {
            "event": "bts:unsubscription_succeeded",
            "channel": "order_book_ethbtc",
            "data": {},
        }
        await assert_silent(ws, 0.1)


async def test_bitstamp_sends_only_changes(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        bitstamp.freeze()
        await send(ws, {"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}})
        await recv(ws)
        snapshot = await recv(ws)
        assert snapshot["event"] == "data"
        assert bitstamp.book("ETHBTC") == as_book(snapshot["data"])
        await assert_silent(ws, 0.15)  # a quiet book is silent

        bitstamp.set_book("ethbtc", bids=[("0.07001000", "1.50000000")], asks=[(0.0701, 2)])
        pinned = await recv(ws)
        assert pinned["data"]["bids"] == [["0.07001000", "1.50000000"]]
        assert pinned["data"]["asks"] == [["0.07010000", "2.00000000"]]
        assert bitstamp.book("ETHBTC") == SimBook(bids=((0.07001, 1.5),), asks=((0.0701, 2.0),))
        bitstamp.unfreeze()
        await assert_silent(ws, 0.15)  # still pinned: still silent

        bitstamp.unpin("ETHBTC")
        count = 0
        with trio.move_on_after(0.3):
            while True:
                assert (await recv(ws))["event"] == "data"
                count += 1
    # 100 changes/s on average over 0.3 s; a wide margin for a loaded machine.
    assert 5 <= count <= 100


async def test_bitstamp_request_reconnect(bitstamp: BitstampSimulator) -> None:
    async with open_websocket_url(bitstamp.url) as ws:
        await send(ws, {"event": "bts:heartbeat"})
        await recv(ws)
        await bitstamp.request_reconnect(grace=0.1)
        assert await recv(ws) == {"event": "bts:request_reconnect", "channel": "", "data": ""}
        assert await close_code(ws) == 1000
    await wait_for(lambda: bitstamp.connections == 0)


async def test_bitstamp_rejects_other_paths(bitstamp: BitstampSimulator) -> None:
    with pytest.raises(ConnectionRejected) as excinfo:
        async with open_websocket_url(bitstamp.url + "/stream"):
            pass
    assert excinfo.value.status_code == 404


# -- Every venue ---------------------------------------------------------------------------


async def first_data(ws: WebSocketConnection, venue: SimulatedVenue) -> None:
    """Subscribe as the service's adapter for `venue` does, and read until it has a book."""
    adapter = ADAPTERS[venue.name](["ETHBTC"], 10)
    for message in adapter.subscribe_messages():
        await ws.send_message(message)
    with trio.fail_after(TIMEOUT):
        while not any(
            isinstance(event, VenueBook)
            for event in adapter.handle_message(await ws.get_message(), 1)
        ):
            pass


def data_url(venue: SimulatedVenue) -> str:
    return ADAPTERS[venue.name](["ETHBTC"], 10).connect_url(venue.url)


@pytest.mark.parametrize("venue_name", list(SIMULATORS))
async def test_kill_resets_connections_and_restart_listens_again(
    venue_name: str, nursery: trio.Nursery
) -> None:
    venue = SIMULATORS[venue_name](Market(seed=7), seed=7)
    await nursery.start(venue.serve)
    port = venue.port
    url = data_url(venue)
    async with open_websocket_url(url) as ws:
        await first_data(ws, venue)
        assert venue.connections == 1
        await venue.kill()
        assert venue.connections == 0
        assert not venue.listening
        assert await close_code(ws) == 1006, "no close frame: an abnormal closure"

    with pytest.raises(HandshakeError):
        async with open_websocket_url(url, connect_timeout=2):
            pass

    await venue.restart()
    assert venue.port == port
    async with open_websocket_url(url) as ws:
        await first_data(ws, venue)
        assert venue.connections == 1
    assert venue.connections_total == 2
    await venue.kill()
    await venue.kill()  # idempotent
    await venue.restart()
    await venue.restart()
    assert venue.listening


async def test_garbage_never_crashes_a_simulator(binance: BinanceSimulator) -> None:
    for junk in (b"", b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00" + b"\x00" * 300):
        stream = await trio.open_tcp_stream("127.0.0.1", binance.port)
        if junk:
            await stream.send_all(junk)
        with trio.move_on_after(0.2):
            await stream.receive_some()
        await stream.aclose()
    async with open_websocket_url(f"{binance.url}/ws") as ws:
        await ws.send_message(b"\x00" * 1000)
        assert (await recv(ws))["error"]["code"] == 3
        await send(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
        assert await recv(ws) == {"result": [], "id": 1}


async def test_run_simulators_shares_one_market(nursery: trio.Nursery) -> None:
    names = {name.capitalize() if name == "bitstamp" else name: 0 for name in SIMULATORS}
    venues: dict[str, SimulatedVenue] = await nursery.start(
        lambda task_status: run_simulators(names, seed=3, task_status=task_status)
    )
    assert set(venues) == set(SIMULATORS)
    for name, venue in venues.items():
        assert type(venue) is SIMULATORS[name]
        assert venue.market is venues["binance"].market
    assert len({venue.port for venue in venues.values()}) == len(venues)
    mids = []
    for venue in venues.values():
        async with open_websocket_url(data_url(venue)) as ws:
            await first_data(ws, venue)
        book = venue.book("ETHBTC")
        assert book is not None
        mids.append((book.bids[0][0] + book.asks[0][0]) / 2)
    assert (max(mids) - min(mids)) / min(mids) < 0.003, mids


async def test_run_simulators_rejects_unknown_venues() -> None:
    with pytest.raises(ValueError, match="no simulator"):
        await run_simulators({"nasdaq": 0})
