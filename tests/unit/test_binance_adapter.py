"""Binance adapter: combined-stream URL, the 20-level partial book, control messages, validation.

Messages are in Binance's real wire format (VENUES.md): the combined-stream wrapper
``{"stream": "ethbtc@depth20@100ms", "data": {"lastUpdateId": …, "bids": […], "asks": […]}}``
with prices and amounts as strings. Every message is fed both as bytes and as str, the two
forms a WebSocket library may hand over.
"""

from __future__ import annotations

from typing import Any

import pytest

from aggtrio.model import VenueBook
from aggtrio.venues.base import (
    MalformedMessageError,
    ReconnectRequested,
    VenueError,
)
from aggtrio.venues.binance import BinanceAdapter

from .wire import Wire

Side = list[list[str]]

DEFAULT_ENDPOINT = "wss://stream.binance.com:9443"
SIMULATOR = "ws://127.0.0.1:9001"
ETHBTC_STREAM = "ethbtc@depth20@100ms"
RECV_NS = 1_700_000_000_123_456_789


def bid_side(n: int = 20) -> Side:
    """`n` bid levels, best (highest) first, as Binance's exact decimal strings."""
    return [[f"{0.07000 - i * 0.00001:.5f}", f"{1.5 + i:.3f}"] for i in range(n)]


def ask_side(n: int = 20) -> Side:
    """`n` ask levels, best (lowest) first."""
    return [[f"{0.07010 + i * 0.00001:.5f}", f"{2.25 + i:.3f}"] for i in range(n)]


def depth_message(
    bids: Side, asks: Side, *, stream: str = ETHBTC_STREAM, last_update_id: int = 160
) -> dict[str, Any]:
    return {
        "stream": stream,
        "data": {"lastUpdateId": last_update_id, "bids": bids, "asks": asks},
    }


def as_floats(side: Side) -> tuple[tuple[float, float], ...]:
    return tuple((float(price), float(amount)) for price, amount in side)


def adapter(*symbols: str, depth: int = 10) -> BinanceAdapter:
    return BinanceAdapter(symbols or ("ETHBTC",), depth)


# --- connect URL ------------------------------------------------------------------------------


def test_default_endpoint_is_the_real_binance_stream_host() -> None:
    assert BinanceAdapter.default_url == DEFAULT_ENDPOINT


@pytest.mark.parametrize("base", [DEFAULT_ENDPOINT, DEFAULT_ENDPOINT + "/"])
def test_connect_url_one_symbol_on_the_real_endpoint(base: str) -> None:
    assert adapter("ETHBTC").connect_url(base) == (
        "wss://stream.binance.com:9443/stream?streams=ethbtc@depth20@100ms"
    )


@pytest.mark.parametrize("base", [SIMULATOR, SIMULATOR + "/"])
def test_connect_url_several_symbols_on_a_simulator(base: str) -> None:
    url = adapter("ETHBTC", "BTCUSDT", "ETHUSDT").connect_url(base)
    assert url == (
        "ws://127.0.0.1:9001/stream?streams="
        "ethbtc@depth20@100ms/btcusdt@depth20@100ms/ethusdt@depth20@100ms"
    )


def test_subscribes_through_the_url_so_sends_nothing_on_connect() -> None:
    # Subscribe messages count against Binance's 5 messages/s limit; the URL carries them.
    binance = adapter("ETHBTC", "BTCUSDT")
    assert binance.subscribe_messages() == []
    assert binance.heartbeat_message() is None


# --- books ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [10, 5, 1])
def test_twenty_level_message_gives_depth_levels_as_floats_best_first(
    wire: Wire, depth: int
) -> None:
    bids, asks = bid_side(20), ask_side(20)
    events = adapter(depth=depth).handle_message(wire(depth_message(bids, asks)), RECV_NS)

    assert events == [
        VenueBook("binance", "ETHBTC", as_floats(bids[:depth]), as_floats(asks[:depth]), RECV_NS)
    ]
    book = events[0]
    assert len(book.bids) == depth
    assert len(book.asks) == depth
    for price, amount in book.bids + book.asks:
        assert type(price) is float
        assert type(amount) is float
    assert book.bids[0] == (0.07, 1.5)
    assert book.asks[0] == (0.0701, 2.25)
    assert [p for p, _ in book.bids] == sorted((p for p, _ in book.bids), reverse=True)
    assert [p for p, _ in book.asks] == sorted(p for p, _ in book.asks)


def test_book_carries_the_symbol_of_its_stream(wire: Wire) -> None:
    binance = adapter("ETHBTC", "BTCUSDT")
    btc_bids = [["43000.10", "0.5"], ["42999.90", "1.25"]]
    btc_asks = [["43000.20", "0.75"]]
    events = binance.handle_message(
        wire(depth_message(btc_bids, btc_asks, stream="btcusdt@depth20@100ms")), 42
    )
    assert events == [
        VenueBook(
            "binance", "BTCUSDT", ((43000.10, 0.5), (42999.90, 1.25)), ((43000.20, 0.75),), 42
        )
    ]
    eth = binance.handle_message(wire(depth_message(bid_side(3), ask_side(3))), 43)
    assert [(e.symbol, e.recv_ns) for e in eth if isinstance(e, VenueBook)] == [("ETHBTC", 43)]


def test_fewer_levels_than_depth_are_kept_as_they_are(wire: Wire) -> None:
    bids, asks = bid_side(3), ask_side(1)
    events = adapter().handle_message(wire(depth_message(bids, asks)), RECV_NS)
    assert events == [VenueBook("binance", "ETHBTC", as_floats(bids), as_floats(asks), RECV_NS)]


@pytest.mark.parametrize("sides", ["no asks", "no bids", "neither"])
def test_an_empty_or_one_sided_book_is_malformed(wire: Wire, sides: str) -> None:
    bids = [] if sides in ("no bids", "neither") else bid_side(3)
    asks = [] if sides in ("no asks", "neither") else ask_side(3)
    with pytest.raises(MalformedMessageError, match=r"one-sided|no bids or asks"):
        adapter().handle_message(wire(depth_message(bids, asks)), RECV_NS)


# --- unchanged pushes are dropped -------------------------------------------------------------


def test_identical_repeat_yields_no_event(wire: Wire) -> None:
    binance = adapter()
    message = depth_message(bid_side(), ask_side())
    assert len(binance.handle_message(wire(message), 1)) == 1
    # Binance re-pushes the full top 20 every 100 ms, changed or not; lastUpdateId may move.
    again = depth_message(bid_side(), ask_side(), last_update_id=161)
    assert binance.handle_message(wire(again), 2) == []


def test_change_in_level_ten_yields_a_book(wire: Wire) -> None:
    binance = adapter(depth=10)
    binance.handle_message(wire(depth_message(bid_side(), ask_side())), 1)

    asks = ask_side()
    asks[9][1] = "99.000"  # level 10 of the asks: still inside the top 10
    events = binance.handle_message(wire(depth_message(bid_side(), asks)), 2)
    assert events == [
        VenueBook("binance", "ETHBTC", as_floats(bid_side(10)), as_floats(asks[:10]), 2)
    ]


def test_change_in_bid_level_ten_price_yields_a_book(wire: Wire) -> None:
    binance = adapter(depth=10)
    binance.handle_message(wire(depth_message(bid_side(), ask_side())), 1)

    bids = bid_side()
    bids[9][0] = "0.069905"  # between levels 10 and 11: order is kept
    events = binance.handle_message(wire(depth_message(bids, ask_side())), 2)
    assert len(events) == 1
    assert isinstance(events[0], VenueBook)
    assert events[0].bids[9] == (0.069905, float(bids[9][1]))


def test_change_only_beyond_depth_yields_no_event(wire: Wire) -> None:
    binance = adapter(depth=10)
    binance.handle_message(wire(depth_message(bid_side(), ask_side())), 1)

    bids, asks = bid_side(), ask_side()
    bids[14][1] = "777.000"  # level 15: outside the top 10 this service publishes
    asks[14][1] = "777.000"
    assert binance.handle_message(wire(depth_message(bids, asks)), 2) == []


def test_a_new_connection_yields_a_book_for_an_identical_message_again(wire: Wire) -> None:
    binance = adapter()
    message = wire(depth_message(bid_side(), ask_side()))
    assert len(binance.handle_message(message, 1)) == 1
    assert binance.handle_message(message, 2) == []

    # A new connection: the aggregator may have been told the venue went down.
    fresh = binance.for_new_connection()
    assert binance.handle_message(message, 3) == []
    assert fresh.handle_message(message, 3) == [
        VenueBook("binance", "ETHBTC", as_floats(bid_side(10)), as_floats(ask_side(10)), 3)
    ]


def test_repeat_suppression_is_per_symbol(wire: Wire) -> None:
    binance = adapter("ETHBTC", "BTCUSDT")
    bids, asks = bid_side(), ask_side()
    eth = binance.handle_message(wire(depth_message(bids, asks)), 1)
    btc = binance.handle_message(wire(depth_message(bids, asks, stream="btcusdt@depth20@100ms")), 2)
    assert [e.symbol for e in eth if isinstance(e, VenueBook)] == ["ETHBTC"]
    assert [e.symbol for e in btc if isinstance(e, VenueBook)] == ["BTCUSDT"]


# --- control messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": 1_700_000_000_000}},
        {"e": "serverShutdown", "E": 1_700_000_000_000},
    ],
    ids=["combined", "raw"],
)
def test_server_shutdown_requests_a_reconnect(wire: Wire, message: dict[str, Any]) -> None:
    events = adapter().handle_message(wire(message), RECV_NS)
    assert len(events) == 1
    assert isinstance(events[0], ReconnectRequested)


def test_subscribe_acknowledgement_yields_nothing(wire: Wire) -> None:
    assert adapter().handle_message(wire({"result": None, "id": 1}), RECV_NS) == []


def test_error_response_yields_a_venue_error(wire: Wire) -> None:
    message = {"error": {"code": 2, "msg": "Invalid request: unknown stream"}, "id": 1}
    events = adapter().handle_message(wire(message), RECV_NS)
    assert len(events) == 1
    assert isinstance(events[0], VenueError)
    assert "Invalid request: unknown stream" in events[0].message


# --- malformed messages -----------------------------------------------------------------------


def _data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"lastUpdateId": 160, "bids": bid_side(5), "asks": ask_side(5)}
    data.update(overrides)
    return {"stream": ETHBTC_STREAM, "data": data}


def _without(key: str) -> dict[str, Any]:
    message = _data()
    del message["data"][key]
    return message


def _bids(*levels: Any) -> dict[str, Any]:
    return _data(bids=[*levels], asks=[["0.09", "1"]])


def _asks(*levels: Any) -> dict[str, Any]:
    return _data(bids=[["0.05", "1"]], asks=[*levels])


RAW = object()  # marks a case whose message is already wire text, not a JSON value

MALFORMED: dict[str, Any] = {
    "invalid JSON": (RAW, '{"stream": "ethbtc@depth20@100ms", "data": {'),
    "empty message": (RAW, ""),
    "JSON list": [_data()],
    "JSON string": "ethbtc@depth20@100ms",
    "JSON null": None,
    "neither data nor response": {"id": 1},
    "unknown stream": depth_message(bid_side(), ask_side(), stream="btcusdt@depth20@100ms"),
    "other channel of our symbol": depth_message(bid_side(), ask_side(), stream="ethbtc@trade"),
    "upper-case stream name": depth_message(bid_side(), ask_side(), stream="ETHBTC@depth20@100ms"),
    "stream not a string": depth_message(bid_side(), ask_side(), stream=["ethbtc"]),
    "data not an object": {"stream": ETHBTC_STREAM, "data": [bid_side(), ask_side()]},
    "missing data": {"stream": ETHBTC_STREAM},
    "missing bids": _without("bids"),
    "missing asks": _without("asks"),
    "bids not a list": _data(bids={"0.07": "1.5"}),
    "asks a string": _data(asks="0.0701"),
    "non-numeric price": _bids(["abc", "1.5"]),
    "empty price": _bids(["", "1.5"]),
    "non-numeric amount": _asks(["0.0701", "lots"]),
    "price as a JSON number": _bids([0.07, "1.5"]),
    "negative amount": _bids(["0.07", "-1.5"]),
    "zero amount": _asks(["0.0701", "0"]),
    "negative price": _bids(["-0.07", "1.5"]),
    "zero price": _asks(["0", "1.5"]),
    "nan price": _bids(["nan", "1.5"]),
    "NaN amount": _asks(["0.0701", "NaN"]),
    "inf price": _asks(["inf", "1.5"]),
    "Infinity amount": _bids(["0.07", "Infinity"]),
    "price overflowing to inf": _asks(["1e400", "1.5"]),
    "level with one element": _bids(["0.07"]),
    "level an empty list": _asks([]),
    "level a string": _bids("0.07"),
    "level an object": _asks({"price": "0.0701", "amount": "1"}),
    "bids not descending": _bids(["0.069", "1"], ["0.070", "1"]),
    "asks not ascending": _asks(["0.0702", "1"], ["0.0701", "1"]),
    "duplicate bid price": _bids(["0.07", "1"], ["0.07", "2"]),
    "duplicate ask price spelled differently": _asks(["0.0701", "1"], ["0.07010", "2"]),
    "crossed book": _data(bids=[["0.0702", "1"]], asks=[["0.0701", "1"]]),
    "locked book (best bid == best ask)": _data(bids=[["0.0701", "1"]], asks=[["0.0701", "1"]]),
    "bad level deep inside the top 10": _data(
        bids=[*bid_side(8), ["0.0699", "x"], *bid_side(20)[9:]]
    ),
}


def _encode(case: Any, wire: Wire) -> str | bytes:
    if isinstance(case, tuple) and case[0] is RAW:
        return wire.text(case[1])
    return wire(case)


@pytest.mark.parametrize("case", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_message_raises(wire: Wire, case: Any) -> None:
    with pytest.raises(MalformedMessageError):
        adapter().handle_message(_encode(case, wire), RECV_NS)


@pytest.mark.parametrize("case", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_message_does_not_change_what_follows(wire: Wire, case: Any) -> None:
    good = wire(depth_message(bid_side(), ask_side()))
    newer_bids = bid_side()
    newer_bids[0][1] = "3.000"
    newer = wire(depth_message(newer_bids, ask_side()))

    # On a fresh connection the first good message after a bad one is a full book.
    fresh = adapter()
    with pytest.raises(MalformedMessageError):
        fresh.handle_message(_encode(case, wire), 1)
    assert len(fresh.handle_message(good, 2)) == 1

    # Mid-stream: the bad message neither counts as "the last book" nor forgets it.
    binance = adapter()
    assert len(binance.handle_message(good, 1)) == 1
    with pytest.raises(MalformedMessageError):
        binance.handle_message(_encode(case, wire), 2)
    assert binance.handle_message(good, 3) == []
    assert binance.handle_message(newer, 4) == [
        VenueBook("binance", "ETHBTC", as_floats(newer_bids[:10]), as_floats(ask_side(10)), 4)
    ]
