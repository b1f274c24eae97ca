"""Bybit adapter: URL, requests, snapshot-then-delta books, continuity, replies, bad input.

Messages are in Bybit v5 spot's wire format (docs, "Orderbook" and "Connect"):
``{"topic": "orderbook.50.ETHBTC", "type": "snapshot"|"delta", "ts": …, "data": {"s":
"ETHBTC", "b": [["0.03512", "1.5"], …], "a": […], "u": 18521288, "seq": 7961638724},
"cts": …}``. Every message is fed both as bytes and as str.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aggtrio.model import VenueBook
from aggtrio.venues.base import MalformedMessageError, Resync, Subscribed, VenueError
from aggtrio.venues.bybit import BybitAdapter

from .wire import Wire

Levels = list[list[str]]
TOPIC = "orderbook.50.ETHBTC"
FIRST_U = 18_521_288


def bid_side(n: int = 50) -> Levels:
    return [[f"{0.0350 - i * 0.00001:.5f}", f"{1.5 + i / 8:g}"] for i in range(n)]


def ask_side(n: int = 50) -> Levels:
    return [[f"{0.0351 + i * 0.00001:.5f}", f"{0.25 + i / 8:g}"] for i in range(n)]


def message(kind: str, bids: Levels, asks: Levels, u: int, *, topic: str = TOPIC) -> dict[str, Any]:
    symbol = topic.rsplit(".", 1)[1]
    return {
        "topic": topic,
        "type": kind,
        "ts": 1672304484978,
        "data": {"s": symbol, "b": bids, "a": asks, "u": u, "seq": 7961638724 + u},
        "cts": 1672304484976,
    }


def snapshot(bids: Levels | None = None, asks: Levels | None = None, u: int = FIRST_U,
             **kw: Any) -> dict[str, Any]:  # fmt: skip
    return message("snapshot", bid_side() if bids is None else bids,
                   ask_side() if asks is None else asks, u, **kw)  # fmt: skip


def delta(bids: Levels, asks: Levels, u: int, **kw: Any) -> dict[str, Any]:
    return message("delta", bids, asks, u, **kw)


def floats(side: Levels) -> tuple[tuple[float, float], ...]:
    return tuple((float(price), float(amount)) for price, amount in side)


def book(bids: Levels, asks: Levels, recv_ns: int, depth: int = 10) -> VenueBook:
    return VenueBook("bybit", "ETHBTC", floats(bids[:depth]), floats(asks[:depth]), recv_ns)


def adapter(*symbols: str, depth: int = 10) -> BybitAdapter:
    return BybitAdapter(symbols or ("ETHBTC",), depth)


def synced(wire: Wire, **kw: Any) -> BybitAdapter:
    bybit = adapter(**kw)
    assert len(bybit.handle_message(wire(snapshot()), 1)) == 1
    return bybit


# --- connecting -------------------------------------------------------------------------------


def test_default_endpoint_is_bybits_public_spot_stream() -> None:
    bybit = BybitAdapter(["ETHBTC"], 10)
    assert bybit.connect_url(bybit.default_url) == "wss://stream.bybit.com/v5/public/spot"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("wss://stream.bybit.com/v5/public/spot", "wss://stream.bybit.com/v5/public/spot"),
        ("wss://stream-testnet.bybit.com/v5/public/spot/", "wss://stream-testnet.bybit.com/v5/public/spot"),
        ("wss://stream.bybit.com", "wss://stream.bybit.com/v5/public/spot"),
        ("ws://127.0.0.1:9005", "ws://127.0.0.1:9005/v5/public/spot"),
        ("ws://127.0.0.1:9005/", "ws://127.0.0.1:9005/v5/public/spot"),
    ],
)  # fmt: skip
def test_connect_url_adds_the_spot_path_to_a_bare_host(base: str, expected: str) -> None:
    assert adapter().connect_url(base) == expected


def test_subscribe_requests_carry_at_most_ten_topics_each() -> None:
    symbols = [f"COIN{i}USDT" for i in range(23)]
    requests = [json.loads(m) for m in adapter(*symbols).subscribe_messages()]
    assert [len(r["args"]) for r in requests] == [10, 10, 3]
    assert [r["op"] for r in requests] == ["subscribe"] * 3
    assert [arg for r in requests for arg in r["args"]] == [f"orderbook.50.{s}" for s in symbols]
    assert len({r["req_id"] for r in requests}) == 3  # each reply can be told apart


def test_subscribe_uses_bybits_pair_spelling() -> None:
    (request,) = [json.loads(m) for m in adapter("eth/btc", "BTC-USDT").subscribe_messages()]
    assert request["args"] == ["orderbook.50.ETHBTC", "orderbook.50.BTCUSDT"]


@pytest.mark.parametrize(
    ("depth", "levels"), [(1, 50), (10, 50), (50, 50), (51, 200), (1000, 1000)]
)
def test_the_topic_is_the_shallowest_that_holds_the_depth(depth: int, levels: int) -> None:
    (request,) = [json.loads(m) for m in adapter(depth=depth).subscribe_messages()]
    assert request["args"] == [f"orderbook.{levels}.ETHBTC"]


def test_resubscribe_is_unsubscribe_then_subscribe_of_that_topic_only() -> None:
    bybit = adapter("ETHBTC", "BTCUSDT")
    requests = [json.loads(m) for m in bybit.resubscribe_messages("BTCUSDT")]
    assert [(r["op"], r["args"]) for r in requests] == [
        ("unsubscribe", ["orderbook.50.BTCUSDT"]),
        ("subscribe", ["orderbook.50.BTCUSDT"]),
    ]


def test_heartbeat_is_a_ping_sent_well_within_the_liveness_timeout() -> None:
    assert json.loads(adapter().heartbeat_message())["op"] == "ping"
    interval = BybitAdapter.heartbeat_interval
    assert interval is not None
    # Bybit wants a ping at least every 20 s; a quiet book is silent, so liveness rests on
    # the pongs, and three of them fit into the timeout.
    assert interval <= 20
    assert 3 * interval <= BybitAdapter.default_liveness_timeout


# --- books ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [10, 3])
def test_snapshot_publishes_the_top_depth_levels(wire: Wire, depth: int) -> None:
    events = adapter(depth=depth).handle_message(wire(snapshot()), 7)
    assert events == [book(bid_side(), ask_side(), 7, depth)]


def test_deltas_update_insert_and_delete_levels(wire: Wire) -> None:
    bybit = synced(wire)
    bids, asks = bid_side(), ask_side()
    change = delta(
        [[bids[1][0], "0"], ["0.034995", "7"]],  # delete level 2, insert between 1 and 3
        [[asks[0][0], "9.5"]],  # change the best ask's amount
        FIRST_U + 1,
    )
    bids = [bids[0], ["0.034995", "7"], *bids[2:]]
    asks = [[asks[0][0], "9.5"], *asks[1:]]
    assert bybit.handle_message(wire(change), 2) == [book(bids, asks, 2)]


def test_a_deleted_top_level_is_refilled_from_deeper_in_the_book(wire: Wire) -> None:
    bybit = synced(wire)
    bids = bid_side()
    gone = [[price, "0"] for price, _ in bids[:5]]
    assert bybit.handle_message(wire(delta(gone, [], FIRST_U + 1)), 2) == [
        book(bids[5:], ask_side(), 2)
    ]


def test_a_change_below_the_published_depth_publishes_nothing(wire: Wire) -> None:
    bybit = synced(wire)
    assert bybit.handle_message(wire(delta([[bid_side()[30][0], "4"]], [], FIRST_U + 1)), 2) == []
    # ...but it is kept: it shows once the levels above it are gone.
    gone = [[price, "0"] for price, _ in bid_side()[:30]]
    (published,) = bybit.handle_message(wire(delta(gone, [], FIRST_U + 2)), 3)
    assert isinstance(published, VenueBook)
    assert published.bids[0] == (float(bid_side()[30][0]), 4.0)


def test_the_book_is_capped_at_the_topics_depth(wire: Wire) -> None:
    bybit = synced(wire)
    # A better bid arrives and Bybit does not (yet) delete its 51st level: it is trimmed, so
    # deleting the top 50 afterwards leaves nothing stale behind.
    bybit.handle_message(wire(delta([["0.03501", "1"]], [], FIRST_U + 1)), 2)
    top = [["0.03501", "0"]] + [[price, "0"] for price, _ in bid_side()[:49]]
    events = bybit.handle_message(wire(delta(top, [], FIRST_U + 2)), 3)
    assert events == [Resync("ETHBTC", "the book lost a side")]


def test_an_empty_delta_in_sequence_changes_nothing(wire: Wire) -> None:
    bybit = synced(wire)
    assert bybit.handle_message(wire(delta([], [], FIRST_U + 1)), 2) == []
    assert len(bybit.handle_message(wire(delta([["0.035", "0"]], [], FIRST_U + 2)), 3)) == 1


def test_books_are_kept_per_symbol(wire: Wire) -> None:
    bybit = adapter("ETHBTC", "BTCUSDT")
    other = "orderbook.50.BTCUSDT"
    btc = snapshot([["90000.5", "0.5"]], [["90001", "0.25"]], u=5, topic=other)
    assert bybit.handle_message(wire(btc), 1) == [
        VenueBook("bybit", "BTCUSDT", ((90000.5, 0.5),), ((90001.0, 0.25),), 1)
    ]
    assert len(bybit.handle_message(wire(snapshot()), 2)) == 1
    # Each symbol's `u` is its own.
    assert len(bybit.handle_message(wire(delta([["90000.5", "1"]], [], 6, topic=other)), 3)) == 1
    assert len(bybit.handle_message(wire(delta([["0.035", "1"]], [], FIRST_U + 1)), 4)) == 1


# --- continuity -------------------------------------------------------------------------------

BREAKS = {
    "gap": FIRST_U + 2,
    "duplicate": FIRST_U,
    "out of order": FIRST_U - 3,
}


@pytest.mark.parametrize("u", list(BREAKS.values()), ids=list(BREAKS))
def test_a_break_in_u_is_one_resync_then_deltas_wait_for_a_snapshot(wire: Wire, u: int) -> None:
    bybit = synced(wire)
    (event,) = bybit.handle_message(wire(delta([["0.0349", "2"]], [], u)), 2)
    assert isinstance(event, Resync)
    assert event.symbol == "ETHBTC"
    assert str(u) in event.reason
    # Later deltas, in sequence or not, are ignored: no second Resync, no book.
    for later in (u + 1, u + 2, FIRST_U + 1):
        assert bybit.handle_message(wire(delta([["0.0349", "3"]], [], later)), 3) == []
    # The next snapshot brings the symbol back, and deltas follow on from it.
    fresh = snapshot(u=900)
    assert bybit.handle_message(wire(fresh), 4) == [book(bid_side(), ask_side(), 4)]
    assert bybit.handle_message(wire(delta([["0.035", "3"]], [], 901)), 5) == [
        book([["0.035", "3"], *bid_side()[1:]], ask_side(), 5)
    ]


def test_a_new_snapshot_mid_stream_replaces_the_book(wire: Wire) -> None:
    bybit = synced(wire)
    bids, asks = [["0.0348", "1"]], [["0.0352", "2"]]
    assert bybit.handle_message(wire(snapshot(bids, asks, u=FIRST_U + 40)), 2) == [
        book(bids, asks, 2)
    ]
    assert len(bybit.handle_message(wire(delta([["0.0347", "1"]], [], FIRST_U + 41)), 3)) == 1


def test_u_of_one_is_a_restart_snapshot_even_if_typed_delta(wire: Wire) -> None:
    bybit = synced(wire)
    bids, asks = [["0.0348", "1"]], [["0.0352", "2"]]
    assert bybit.handle_message(wire(delta(bids, asks, 1)), 2) == [book(bids, asks, 2)]
    assert bybit.handle_message(wire(delta([], [["0.0352", "5"]], 2)), 3) == [
        book(bids, [["0.0352", "5"]], 3)
    ]


def test_a_delta_that_crosses_the_book_is_a_resync(wire: Wire) -> None:
    bybit = synced(wire)
    (event,) = bybit.handle_message(wire(delta([["0.0352", "1"]], [], FIRST_U + 1)), 2)
    assert isinstance(event, Resync)
    assert "crossed" in event.reason


def test_a_delta_before_the_acknowledged_subscriptions_snapshot_is_a_resync(wire: Wire) -> None:
    bybit = adapter()
    (request,) = [json.loads(m) for m in bybit.subscribe_messages()]
    ack = {"success": True, "ret_msg": "subscribe", "conn_id": "c", "req_id": request["req_id"],
           "op": "subscribe"}  # fmt: skip
    assert bybit.handle_message(wire(ack), 1) == [Subscribed("ETHBTC")]
    (event,) = bybit.handle_message(wire(delta([["0.0349", "2"]], [], 77)), 2)
    assert isinstance(event, Resync)
    assert bybit.handle_message(wire(delta([["0.0349", "2"]], [], 78)), 3) == []


def test_a_delta_before_any_acknowledgement_is_ignored(wire: Wire) -> None:
    # After a resync, the old subscription's last deltas may still be on their way.
    bybit = adapter()
    assert bybit.handle_message(wire(delta([["0.0349", "2"]], [], 77)), 1) == []


# --- replies ----------------------------------------------------------------------------------


def test_subscribe_ack_yields_subscribed_for_the_symbols_of_that_request(wire: Wire) -> None:
    bybit = adapter("ETHBTC", "BTCUSDT")
    (request,) = [json.loads(m) for m in bybit.subscribe_messages()]
    ack = {"success": True, "ret_msg": "subscribe", "conn_id": "2324d924", "req_id":
           request["req_id"], "op": "subscribe"}  # fmt: skip
    assert bybit.handle_message(wire(ack), 1) == [Subscribed("ETHBTC"), Subscribed("BTCUSDT")]
    assert bybit.handle_message(wire(ack), 2) == []  # answered already


@pytest.mark.parametrize(
    "reply",
    [
        {"success": True, "ret_msg": "pong", "conn_id": "0970e817", "op": "ping"},
        {"success": True, "ret_msg": "pong", "conn_id": "0970e817", "req_id": "ping", "op": "ping"},
        {"req_id": "test", "op": "pong", "args": ["1675418560633"], "conn_id": "cfcb4"},
        {"success": True, "ret_msg": "", "conn_id": "c", "req_id": "9", "op": "unsubscribe"},
        {"success": True, "ret_msg": "subscribe", "conn_id": "c", "req_id": "x", "op": "subscribe"},
    ],
    ids=["pong", "pong with req_id", "pong linear style", "unsubscribed", "unknown ack"],
)  # fmt: skip
def test_pongs_and_other_acks_yield_nothing(wire: Wire, reply: dict[str, Any]) -> None:
    assert adapter().handle_message(wire(reply), 1) == []


def test_a_refusal_is_a_venue_error_naming_the_symbols_and_reason(wire: Wire) -> None:
    bybit = adapter("ETHBTC", "NOPEUSDT")
    (request,) = [json.loads(m) for m in bybit.subscribe_messages()]
    refusal = {"success": False, "ret_msg": "Invalid symbol :[orderbook.50.NOPEUSDT]",
               "conn_id": "c", "req_id": request["req_id"], "op": "subscribe"}  # fmt: skip
    (event,) = bybit.handle_message(wire(refusal), 1)
    assert isinstance(event, VenueError)
    assert "Invalid symbol" in event.message
    assert "NOPEUSDT" in event.message


# --- malformed messages -----------------------------------------------------------------------


def _snap(**data: Any) -> dict[str, Any]:
    good = snapshot(bid_side(5), ask_side(5), u=FIRST_U + 1)
    good["data"].update(data)
    return good


def _delta(**data: Any) -> dict[str, Any]:
    good = delta([["0.0349", "2"]], [["0.0352", "0"]], FIRST_U + 1)
    good["data"].update(data)
    return good


def _without(message: dict[str, Any], key: str) -> dict[str, Any]:
    del message["data"][key]
    return message


RAW = object()

MALFORMED: dict[str, Any] = {
    "invalid JSON": (RAW, '{"topic": "orderbook.50.ETHBTC", "type": "delta", "data": {'),
    "empty message": (RAW, ""),
    "u beyond 64 bits": (
        RAW,
        '{"topic":"orderbook.50.ETHBTC","type":"delta","data":{"s":"ETHBTC","b":[],"a":[],'
        '"u":100000000000000000000}}',
    ),
    "JSON list": [_delta()],
    "JSON null": None,
    "unknown topic": delta([], [], FIRST_U + 1, topic="orderbook.50.LTCBTC"),
    "other depth of our symbol": delta([], [], FIRST_U + 1, topic="orderbook.200.ETHBTC"),
    "topic not a string": {**_delta(), "topic": ["orderbook.50.ETHBTC"]},
    "unknown type": {**_delta(), "type": "partial"},
    "no type": {k: v for k, v in _delta().items() if k != "type"},
    "data not an object": {**_delta(), "data": [1, 2]},
    "no u": _without(_delta(), "u"),
    "u a string": _delta(u=str(FIRST_U + 1)),
    "u a float": _delta(u=float(FIRST_U + 1)),
    "u zero": _delta(u=0),
    "u true": _delta(u=True),
    "delta without bids": _without(_delta(), "b"),
    "delta asks an object": _delta(a={"0.0352": "1"}),
    "delta level of three": _delta(b=[["0.0349", "2", "x"]]),
    "delta level a string": _delta(b=["0.0349"]),
    "delta two-character strings": _delta(b=["12", "34"]),
    "delta negative amount": _delta(b=[["0.0349", "-2"]]),
    "delta zero price": _delta(b=[["0", "2"]]),
    "delta nan amount": _delta(a=[["0.0352", "NaN"]]),
    "delta inf price": _delta(a=[["inf", "1"]]),
    "delta number not text": _delta(b=[[0.0349, "2"]]),
    "delta non-numeric": _delta(b=[["abc", "2"]]),
    "snapshot without asks": _without(_snap(), "a"),
    "snapshot one-sided": _snap(a=[]),
    "snapshot empty": _snap(a=[], b=[]),
    "snapshot crossed": _snap(b=[["0.0352", "1"]]),
    "snapshot zero amount": _snap(b=[["0.0349", "0"]]),
    "snapshot bids not descending": _snap(b=[["0.0348", "1"], ["0.0349", "1"]]),
    "snapshot duplicate price": _snap(a=[["0.0352", "1"], ["0.0352", "2"]]),
    "snapshot two-character strings": _snap(b=["12"]),
    "reply of unknown op": {"success": True, "ret_msg": "", "op": "auth"},
    "neither data nor reply": {"hello": "world"},
}


def _encode(case: Any, wire: Wire) -> str | bytes:
    if isinstance(case, tuple) and case[0] is RAW:
        return wire.text(case[1])
    return wire(case)


@pytest.mark.parametrize("case", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_message_raises_and_leaves_the_book_as_it_was(wire: Wire, case: Any) -> None:
    bybit = synced(wire)
    with pytest.raises(MalformedMessageError):
        bybit.handle_message(_encode(case, wire), 2)
    # The next delta in sequence applies to the book as it was before the bad message.
    change = delta([["0.035", "0"]], [], FIRST_U + 1)
    assert bybit.handle_message(wire(change), 3) == [book(bid_side()[1:], ask_side(), 3)]
