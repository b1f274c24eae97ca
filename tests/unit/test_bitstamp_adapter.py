"""Bitstamp adapter: URL, subscribe and heartbeat messages, the 100-level book, control events.

Messages are in Bitstamp's real wire format (VENUES.md):
``{"event": "data", "channel": "order_book_ethbtc", "data": {"timestamp": …,
"microtimestamp": …, "bids": [["0.07001", "1.5"], …], "asks": […]}}``. Every message is fed
both as bytes and as str.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aggtrio.model import VenueBook
from aggtrio.venues.base import (
    MalformedMessageError,
    ReconnectRequested,
    Subscribed,
    VenueError,
)
from aggtrio.venues.bitstamp import BitstampAdapter

from .wire import Wire

Side = list[list[str]]

DEFAULT_ENDPOINT = "wss://ws.bitstamp.net"
RECV_NS = 1_641_343_695_681_418_000


def bid_side(n: int = 100) -> Side:
    return [[f"{0.07001 - i * 0.00001:.5f}", f"{1.5 + i / 8:.8f}"] for i in range(n)]


def ask_side(n: int = 100) -> Side:
    return [[f"{0.07010 + i * 0.00001:.5f}", f"{0.25 + i / 8:.8f}"] for i in range(n)]


def data_message(bids: Side, asks: Side, *, channel: str = "order_book_ethbtc") -> dict[str, Any]:
    return {
        "event": "data",
        "channel": channel,
        "data": {
            "timestamp": "1641343695",
            "microtimestamp": "1641343695681418",
            "bids": bids,
            "asks": asks,
        },
    }


def as_floats(side: Side) -> tuple[tuple[float, float], ...]:
    return tuple((float(price), float(amount)) for price, amount in side)


def adapter(*symbols: str, depth: int = 10) -> BitstampAdapter:
    return BitstampAdapter(symbols or ("ETHBTC",), depth)


# --- connecting -------------------------------------------------------------------------------


def test_default_endpoint_is_the_real_bitstamp_host() -> None:
    assert BitstampAdapter.default_url == DEFAULT_ENDPOINT


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        (DEFAULT_ENDPOINT, DEFAULT_ENDPOINT),
        (DEFAULT_ENDPOINT + "/", DEFAULT_ENDPOINT),
        ("ws://127.0.0.1:9002", "ws://127.0.0.1:9002"),
        ("ws://127.0.0.1:9002/", "ws://127.0.0.1:9002"),
    ],
)
def test_connect_url_is_the_base_endpoint(base: str, expected: str) -> None:
    assert adapter("ETHBTC", "BTCUSDT").connect_url(base) == expected


def test_subscribe_messages_are_one_bts_subscribe_per_symbol_in_order() -> None:
    messages = adapter("ETHBTC", "BTCUSDT", "ETHEUR").subscribe_messages()
    assert [json.loads(m) for m in messages] == [
        {"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}},
        {"event": "bts:subscribe", "data": {"channel": "order_book_btcusdt"}},
        {"event": "bts:subscribe", "data": {"channel": "order_book_etheur"}},
    ]


def test_heartbeat_is_bts_heartbeat_sent_well_within_the_liveness_timeout() -> None:
    bitstamp = adapter()
    message = bitstamp.heartbeat_message()
    assert message is not None
    assert json.loads(message) == {"event": "bts:heartbeat"}
    # A quiet book is silent; liveness rests on the heartbeat reply, so it must come often
    # enough that an answered heartbeat always arrives before the connection counts as stale.
    interval = BitstampAdapter.heartbeat_interval
    assert interval is not None
    assert 0 < interval < BitstampAdapter.default_liveness_timeout


# --- books ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [10, 3])
def test_hundred_level_message_is_truncated_to_depth(wire: Wire, depth: int) -> None:
    bids, asks = bid_side(100), ask_side(100)
    events = adapter(depth=depth).handle_message(wire(data_message(bids, asks)), RECV_NS)

    assert events == [
        VenueBook("bitstamp", "ETHBTC", as_floats(bids[:depth]), as_floats(asks[:depth]), RECV_NS)
    ]
    book = events[0]
    assert len(book.bids) == len(book.asks) == depth
    for price, amount in book.bids + book.asks:
        assert type(price) is float
        assert type(amount) is float
    assert book.bids[0] == (0.07001, 1.5)
    assert book.asks[0] == (0.0701, 0.25)


def test_book_carries_the_symbol_of_its_channel(wire: Wire) -> None:
    bitstamp = adapter("ETHBTC", "BTCUSDT")
    message = data_message([["43000", "0.5"]], [["43001", "0.25"]], channel="order_book_btcusdt")
    assert bitstamp.handle_message(wire(message), 7) == [
        VenueBook("bitstamp", "BTCUSDT", ((43000.0, 0.5),), ((43001.0, 0.25),), 7)
    ]


def test_fewer_levels_than_depth_are_kept_as_they_are(wire: Wire) -> None:
    bids, asks = bid_side(3), ask_side(1)
    assert adapter().handle_message(wire(data_message(bids, asks)), RECV_NS) == [
        VenueBook("bitstamp", "ETHBTC", as_floats(bids), as_floats(asks), RECV_NS)
    ]


@pytest.mark.parametrize("sides", ["no asks", "no bids", "neither"])
def test_an_empty_or_one_sided_book_is_malformed(wire: Wire, sides: str) -> None:
    bids = [] if sides in ("no bids", "neither") else bid_side(2)
    asks = [] if sides in ("no asks", "neither") else ask_side(2)
    with pytest.raises(MalformedMessageError, match=r"one-sided|no bids or asks"):
        adapter().handle_message(wire(data_message(bids, asks)), RECV_NS)


# --- control events ---------------------------------------------------------------------------


def test_change_only_beyond_depth_yields_no_event(wire: Wire) -> None:
    # Bitstamp sends its top 100 on every change; one below the top `depth` changes nothing.
    bitstamp = adapter(depth=10)
    assert len(bitstamp.handle_message(wire(data_message(bid_side(), ask_side())), 1)) == 1
    bids = bid_side()
    bids[10][1] = "99.000"
    assert bitstamp.handle_message(wire(data_message(bids, ask_side())), 2) == []
    asks = ask_side()
    asks[9][1] = "99.000"  # level 10: inside the top 10
    assert bitstamp.handle_message(wire(data_message(bids, asks)), 3) == [
        VenueBook("bitstamp", "ETHBTC", as_floats(bid_side(10)), as_floats(asks[:10]), 3)
    ]


def test_unchanged_top_is_tracked_per_symbol(wire: Wire) -> None:
    bitstamp = adapter("ETHBTC", "LTCBTC")
    eth = data_message(bid_side(), ask_side())
    ltc = data_message(bid_side(), ask_side(), channel="order_book_ltcbtc")
    assert len(bitstamp.handle_message(wire(eth), 1)) == 1
    assert len(bitstamp.handle_message(wire(ltc), 2)) == 1  # same levels, other symbol
    assert bitstamp.handle_message(wire(eth), 3) == []


def test_subscription_succeeded_yields_subscribed_for_that_symbol(wire: Wire) -> None:
    bitstamp = adapter("ETHBTC", "BTCUSDT")
    for channel, symbol in [("order_book_btcusdt", "BTCUSDT"), ("order_book_ethbtc", "ETHBTC")]:
        message = {"event": "bts:subscription_succeeded", "channel": channel, "data": {}}
        assert bitstamp.handle_message(wire(message), RECV_NS) == [Subscribed(symbol)]


def test_heartbeat_reply_yields_nothing(wire: Wire) -> None:
    reply = {"event": "bts:heartbeat", "channel": "", "data": {"status": "success"}}
    assert adapter().handle_message(wire(reply), RECV_NS) == []


def test_request_reconnect_yields_reconnect_requested(wire: Wire) -> None:
    message = {"event": "bts:request_reconnect", "channel": "", "data": ""}
    events = adapter().handle_message(wire(message), RECV_NS)
    assert len(events) == 1
    assert isinstance(events[0], ReconnectRequested)


def test_error_yields_a_venue_error_with_the_reason(wire: Wire) -> None:
    message = {
        "event": "bts:error",
        "channel": "",
        "data": {"code": None, "message": "Bad subscription string."},
    }
    events = adapter().handle_message(wire(message), RECV_NS)
    assert len(events) == 1
    assert isinstance(events[0], VenueError)
    assert "Bad subscription string." in events[0].message


# --- malformed messages -----------------------------------------------------------------------


def _data(**overrides: Any) -> dict[str, Any]:
    message = data_message(bid_side(5), ask_side(5))
    message["data"].update(overrides)
    return message


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
    "invalid JSON": (RAW, '{"event": "data", "channel": "order_book_ethbtc", "data": {'),
    "empty message": (RAW, ""),
    # Valid JSON, but not a number any venue sends (simdjson refuses it with RuntimeError).
    "integer beyond 64 bits": (
        RAW,
        '{"event": "data", "channel": "order_book_ethbtc", "data": {"timestamp": '
        '100000000000000000000, "bids": [["1", "1"]], "asks": [["2", "1"]]}}',
    ),
    "JSON list": [data_message(bid_side(5), ask_side(5))],
    "JSON number": 17,
    "JSON null": None,
    "unknown event": {"event": "bts:something_new", "channel": "", "data": {}},
    "no event": {"channel": "order_book_ethbtc", "data": {}},
    "event not a string": {"event": ["data"], "channel": "order_book_ethbtc", "data": {}},
    "unknown channel": data_message(bid_side(5), ask_side(5), channel="order_book_btcusdt"),
    "diff channel of our symbol": data_message(
        bid_side(5), ask_side(5), channel="diff_order_book_ethbtc"
    ),
    "channel not a string": {**data_message(bid_side(5), ask_side(5)), "channel": None},
    "data not an object": {"event": "data", "channel": "order_book_ethbtc", "data": "[]"},
    "missing data": {"event": "data", "channel": "order_book_ethbtc"},
    "missing bids": _without("bids"),
    "missing asks": _without("asks"),
    "bids not a list": _data(bids={"0.07": "1.5"}),
    "non-numeric price": _bids(["abc", "1.5"]),
    "non-numeric amount": _asks(["0.0701", "lots"]),
    "price as a JSON number": _asks([0.0701, "1"]),
    "negative amount": _bids(["0.07", "-1.5"]),
    "zero amount": _asks(["0.0701", "0"]),
    "negative price": _bids(["-0.07", "1.5"]),
    "zero price": _bids(["0.0", "1.5"]),
    "nan price": _bids(["nan", "1.5"]),
    "inf price": _asks(["inf", "1.5"]),
    "-inf price": _bids(["-inf", "1.5"]),
    "level with one element": _bids(["0.07"]),
    "level a string": _asks("0.0701"),
    "level null": _bids(None),
    "bids not descending": _bids(["0.069", "1"], ["0.070", "1"]),
    "asks not ascending": _asks(["0.0702", "1"], ["0.0701", "1"]),
    "duplicate price": _asks(["0.0701", "1"], ["0.0701", "2"]),
    "crossed book": _data(bids=[["0.0702", "1"]], asks=[["0.0701", "1"]]),
    "locked book (best bid == best ask)": _data(bids=[["0.0701", "1"]], asks=[["0.0701", "1"]]),
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
    bitstamp = adapter()
    good = data_message(bid_side(), ask_side())
    newer_bids = bid_side()
    newer_bids[0][1] = "3.000"
    assert len(bitstamp.handle_message(wire(good), 1)) == 1
    with pytest.raises(MalformedMessageError):
        bitstamp.handle_message(_encode(case, wire), 2)
    # The bad message neither counts as "the last book" nor forgets it.
    assert bitstamp.handle_message(wire(good), 3) == []
    assert bitstamp.handle_message(wire(data_message(newer_bids, ask_side())), 4) == [
        VenueBook("bitstamp", "ETHBTC", as_floats(newer_bids[:10]), as_floats(ask_side(10)), 4)
    ]
