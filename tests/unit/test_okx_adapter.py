"""OKX adapter: URL, subscribe/resubscribe/ping, the books channel's snapshot and deltas, the
prevSeqId chain (gaps, repeats, reorders, keep-alives, resets), control events, bad input.

Messages are in OKX's real wire format (API v5 docs, "WS / Order book channel"):
``{"arg": {"channel": "books", "instId": "ETH-BTC"}, "action": "snapshot" | "update",
"data": [{"asks": [["0.03501", "2.5", "0", "3"], …], "bids": […], "ts": "…", "checksum": 0,
"prevSeqId": -1, "seqId": 123456}]}``. Every message is fed both as bytes and as str.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aggtrio.model import VenueBook
from aggtrio.venues.base import (
    AdapterEvent,
    CrossedBookError,
    MalformedMessageError,
    ReconnectRequested,
    Resync,
    Subscribed,
    VenueError,
)
from aggtrio.venues.okx import OkxAdapter

from .wire import Wire

Level = list[str]
RECV_NS = 1_597_026_383_085_000_000


def bids(n: int = 400, top: int = 35000) -> list[Level]:
    """`n` bid levels from 0.0{top} down, one tick (0.000001) apart."""
    return [[f"0.0{top - i:05d}"[:8], f"{1 + i % 7}.25", "0", "2"] for i in range(n)]


def asks(n: int = 400, top: int = 35010) -> list[Level]:
    return [[f"0.0{top + i:05d}"[:8], f"{2 + i % 5}.5", "0", "1"] for i in range(n)]


def book(
    action: str,
    bid_levels: list[Level],
    ask_levels: list[Level],
    *,
    prev: int,
    seq: int,
    inst: str = "ETH-BTC",
) -> dict[str, Any]:
    return {
        "arg": {"channel": "books", "instId": inst},
        "action": action,
        "data": [
            {
                "asks": ask_levels,
                "bids": bid_levels,
                "ts": "1597026383085",
                "checksum": 0,
                "prevSeqId": prev,
                "seqId": seq,
            }
        ],
    }


def snapshot(seq: int = 100, inst: str = "ETH-BTC", **sides: list[Level]) -> dict[str, Any]:
    return book(
        "snapshot", sides.get("bids", bids()), sides.get("asks", asks()), prev=-1, seq=seq,
        inst=inst,
    )  # fmt: skip


def update(
    prev: int,
    seq: int,
    bid_levels: list[Level] | None = None,
    ask_levels: list[Level] | None = None,
    inst: str = "ETH-BTC",
) -> dict[str, Any]:
    return book("update", bid_levels or [], ask_levels or [], prev=prev, seq=seq, inst=inst)


def floats(levels: list[Level]) -> tuple[tuple[float, float], ...]:
    return tuple((float(level[0]), float(level[1])) for level in levels)


def adapter(*symbols: str, depth: int = 10) -> OkxAdapter:
    return OkxAdapter(symbols or ("ETHBTC",), depth)


def only_book(events: list[AdapterEvent]) -> VenueBook:
    assert len(events) == 1
    assert isinstance(events[0], VenueBook)
    return events[0]


def synced(wire: Wire, *symbols: str, depth: int = 10) -> OkxAdapter:
    """An adapter that has taken the standard snapshot (seqId 100) of each symbol."""
    okx = adapter(*symbols, depth=depth)
    for symbol in okx.symbols:
        inst = {"ETHBTC": "ETH-BTC", "BTCUSDT": "BTC-USDT"}[symbol]
        only_book(okx.handle_message(wire(snapshot(inst=inst)), RECV_NS))
    return okx


# --- connecting -------------------------------------------------------------------------------


def test_the_default_endpoint_is_okx_public_v5() -> None:
    okx = adapter()
    assert okx.connect_url(OkxAdapter.default_url) == "wss://ws.okx.com:8443/ws/v5/public"
    assert okx.connect_url("ws://127.0.0.1:9003/") == "ws://127.0.0.1:9003/ws/v5/public"


def test_one_subscribe_request_names_every_instrument() -> None:
    okx = adapter("ETHBTC", "BTCUSDT")
    assert [json.loads(m) for m in okx.subscribe_messages()] == [
        {
            "op": "subscribe",
            "args": [
                {"channel": "books", "instId": "ETH-BTC"},
                {"channel": "books", "instId": "BTC-USDT"},
            ],
        }
    ]


def test_resubscribe_unsubscribes_then_subscribes_that_instrument_only() -> None:
    okx = adapter("ETHBTC", "BTCUSDT")
    arg = {"channel": "books", "instId": "BTC-USDT"}
    assert [json.loads(m) for m in okx.resubscribe_messages("BTCUSDT")] == [
        {"op": "unsubscribe", "args": [arg]},
        {"op": "subscribe", "args": [arg]},
    ]


def test_heartbeat_is_the_text_ping_well_inside_the_30s_idle_limit() -> None:
    okx = adapter()
    assert okx.heartbeat_message() == "ping"
    assert OkxAdapter.heartbeat_interval is not None
    assert OkxAdapter.heartbeat_interval < 30
    assert OkxAdapter.heartbeat_interval < OkxAdapter.default_liveness_timeout < 30


# --- snapshot and deltas ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [10, 3])
def test_a_snapshot_publishes_the_top_depth_levels(wire: Wire, depth: int) -> None:
    okx = adapter(depth=depth)
    event = only_book(okx.handle_message(wire(snapshot()), RECV_NS))
    assert event.venue == "okx"
    assert event.symbol == "ETHBTC"
    assert event.recv_ns == RECV_NS
    assert event.bids == floats(bids()[:depth])
    assert event.asks == floats(asks()[:depth])


def test_updates_change_insert_and_delete_levels(wire: Wire) -> None:
    okx = synced(wire)
    changes = update(
        100,
        105,
        [["0.035", "9", "0", "4"], ["0.034999", "0", "0", "0"], ["0.0350005", "1.5", "0", "1"]],
        [["0.03501", "0", "0", "0"]],
    )
    event = only_book(okx.handle_message(wire(changes), RECV_NS + 1))
    expected_bids = [(0.0350005, 1.5), (0.035, 9.0), *floats(bids()[2:10])]
    assert event.bids == tuple(expected_bids[:10])
    assert event.asks == floats(asks()[1:11]), "the deleted best ask is refilled from below"


def test_a_change_below_the_top_publishes_nothing_but_is_kept(wire: Wire) -> None:
    okx = synced(wire)
    deep = bids()[20]
    assert okx.handle_message(wire(update(100, 101, [[deep[0], "0", "0", "0"]])), RECV_NS) == []
    # Deleting the top ten bids brings up levels 10.., without level 20 that was deleted.
    top_ten = [[level[0], "0", "0", "0"] for level in bids()[:10]]
    event = only_book(okx.handle_message(wire(update(101, 102, top_ten)), RECV_NS))
    assert event.bids == floats(bids()[10:20])
    event = only_book(
        okx.handle_message(wire(update(102, 103, [[bids()[10][0], "0", "0", "0"]])), RECV_NS)
    )
    assert event.bids == floats(bids()[11:20] + bids()[21:22])


def test_the_whole_400_level_book_is_kept_and_no_more(wire: Wire) -> None:
    okx = synced(wire, depth=1)
    # Ten more levels below the 400th: the book keeps 400, so they never surface.
    extra = [[f"0.0{34600 - i:05d}", "1", "0", "1"] for i in range(10)]
    assert okx.handle_message(wire(update(100, 101, extra)), RECV_NS) == []
    every = [[level[0], "0", "0", "0"] for level in bids()[:399]]
    event = only_book(okx.handle_message(wire(update(101, 102, every)), RECV_NS))
    assert event.bids == floats(bids()[399:400])
    last = [[bids()[399][0], "0", "0", "0"]]
    events = okx.handle_message(wire(update(102, 103, last)), RECV_NS)
    assert events == [Resync("ETHBTC", "the book lost a side")]


def test_an_unchanged_top_is_not_published_twice(wire: Wire) -> None:
    okx = synced(wire)
    same = update(100, 101, [bids()[0]])  # the best bid again, same size
    assert okx.handle_message(wire(same), RECV_NS) == []


def test_a_crossing_update_breaks_the_book(wire: Wire) -> None:
    okx = synced(wire)
    crossing = update(100, 101, [["0.0351", "1", "0", "1"]])
    events = okx.handle_message(wire(crossing), RECV_NS)
    assert len(events) == 1
    assert isinstance(events[0], Resync)
    assert "crossed" in events[0].reason


def test_symbols_are_kept_apart(wire: Wire) -> None:
    okx = synced(wire, "ETHBTC", "BTCUSDT")
    event = only_book(
        okx.handle_message(
            wire(
                update(
                    100,
                    101,
                    [["0.03", "0", "0", "0"], ["0.035001", "3", "0", "1"]],
                    inst="BTC-USDT",
                )
            ),
            RECV_NS,
        )
    )
    assert event.symbol == "BTCUSDT"
    assert event.bids[0] == (0.035001, 3.0)
    event = only_book(
        okx.handle_message(wire(update(100, 101, [["0.035001", "4", "0", "1"]])), RECV_NS)
    )
    assert event.symbol == "ETHBTC"
    assert event.bids[0] == (0.035001, 4.0)


# --- continuity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prev", "case"),
    [
        (103, "gap: an update went missing"),
        (100, "duplicate: the last update again"),
        (99, "older"),
    ],
)
def test_a_broken_chain_resyncs_once_and_recovers_on_the_next_snapshot(
    wire: Wire, prev: int, case: str
) -> None:
    okx = synced(wire)
    only_book(okx.handle_message(wire(update(100, 101, [["0.035001", "1", "0", "1"]])), RECV_NS))
    events = okx.handle_message(wire(update(prev, 105, [["0.035002", "1", "0", "1"]])), RECV_NS)
    assert len(events) == 1, case
    assert isinstance(events[0], Resync)
    assert events[0].symbol == "ETHBTC"
    assert f"prevSeqId {prev}" in events[0].reason
    # Until the new snapshot, every delta is ignored: no book, no second resync.
    for later in (update(105, 106, [["0.035003", "1", "0", "1"]]), update(1, 2), update(101, 102)):
        assert okx.handle_message(wire(later), RECV_NS) == []
    event = only_book(okx.handle_message(wire(snapshot(seq=500)), RECV_NS))
    assert event.bids == floats(bids()[:10])
    event = only_book(
        okx.handle_message(wire(update(500, 501, [["0.035004", "1", "0", "1"]])), RECV_NS)
    )
    assert event.bids[0] == (0.035004, 1.0)


def test_a_reordered_pair_resyncs_once(wire: Wire) -> None:
    okx = synced(wire)
    second = update(101, 102, [["0.035002", "1", "0", "1"]])
    first = update(100, 101, [["0.035001", "1", "0", "1"]])
    events = okx.handle_message(wire(second), RECV_NS)
    assert [type(event) for event in events] == [Resync]
    assert okx.handle_message(wire(first), RECV_NS) == []


def test_a_keepalive_update_chains_and_changes_nothing(wire: Wire) -> None:
    okx = synced(wire)
    # Docs: no change for ~60 s -> empty sides, seqId == prevSeqId == the last seqId.
    assert okx.handle_message(wire(update(100, 100)), RECV_NS) == []
    assert okx.handle_message(wire(update(100, 100)), RECV_NS) == []
    event = only_book(
        okx.handle_message(wire(update(100, 101, [["0.035001", "1", "0", "1"]])), RECV_NS)
    )
    assert event.bids[0] == (0.035001, 1.0)


def test_a_sequence_reset_after_maintenance_chains(wire: Wire) -> None:
    okx = synced(wire)
    # Docs example: prevSeqId 15, seqId 3, then prevSeqId 3, seqId 5.
    event = only_book(
        okx.handle_message(wire(update(100, 3, [["0.035001", "1", "0", "1"]])), RECV_NS)
    )
    assert event.bids[0] == (0.035001, 1.0)
    event = only_book(
        okx.handle_message(wire(update(3, 5, [["0.035001", "2", "0", "1"]])), RECV_NS)
    )
    assert event.bids[0] == (0.035001, 2.0)
    # The chain now runs from the new numbers: the old one is a break.
    assert [type(e) for e in okx.handle_message(wire(update(100, 101)), RECV_NS)] == [Resync]


def test_the_checksum_field_is_not_checked(wire: Wire) -> None:
    okx = adapter()
    message = snapshot()
    message["data"][0]["checksum"] = -855196043  # the docs' example value
    only_book(okx.handle_message(wire(message), RECV_NS))
    change = update(100, 101, [["0.035001", "1", "0", "1"]])
    change["data"][0]["checksum"] = 12345
    only_book(okx.handle_message(wire(change), RECV_NS))


def test_an_update_before_any_snapshot_is_ignored(wire: Wire) -> None:
    assert adapter().handle_message(wire(update(100, 101, [bids()[0]])), RECV_NS) == []


def ack(inst: str = "ETH-BTC") -> dict[str, Any]:
    return {"event": "subscribe", "arg": {"channel": "books", "instId": inst}, "connId": "a4d3ae55"}


def test_a_malformed_snapshot_is_asked_for_again_on_the_next_update(wire: Wire) -> None:
    okx = adapter()
    assert okx.handle_message(wire(ack()), RECV_NS) == [Subscribed("ETHBTC")]
    with pytest.raises(MalformedMessageError):
        okx.handle_message(wire(snapshot(asks=[])), RECV_NS)
    # No other snapshot would come on its own: the next update of the symbol asks for one.
    events = okx.handle_message(wire(update(100, 101)), RECV_NS)
    assert [type(event) for event in events] == [Resync]
    # Until the new subscription is acked, its old deltas are dropped without a word.
    assert okx.handle_message(wire(update(101, 102)), RECV_NS) == []
    assert okx.handle_message(wire(ack()), RECV_NS) == [Subscribed("ETHBTC")]
    only_book(okx.handle_message(wire(snapshot(seq=7)), RECV_NS))


def test_a_lost_snapshot_is_asked_for_again_once(wire: Wire) -> None:
    okx = adapter("ETHBTC", "BTCUSDT")
    okx.handle_message(wire(ack()), RECV_NS)
    with pytest.raises(MalformedMessageError):
        okx.handle_message(wire.text('{"arg": {"channel": "boo'), RECV_NS)  # was the snapshot
    events = okx.handle_message(wire(update(100, 101)), RECV_NS)
    assert events == [Resync("ETHBTC", "an update came where the snapshot should have")]
    assert okx.handle_message(wire(update(101, 102)), RECV_NS) == []
    # BTC-USDT, not acked yet, is simply awaiting its subscription.
    assert okx.handle_message(wire(update(5, 6, inst="BTC-USDT")), RECV_NS) == []


# --- control messages -------------------------------------------------------------------------


def test_pong_is_no_event(wire: Wire) -> None:
    assert synced(wire).handle_message(wire.text("pong"), RECV_NS) == []


def test_subscribe_ack_is_subscribed(wire: Wire) -> None:
    okx = adapter("ETHBTC", "BTCUSDT")
    assert okx.handle_message(wire(ack("BTC-USDT")), RECV_NS) == [Subscribed("BTCUSDT")]
    other = {"event": "subscribe", "arg": {"channel": "books", "instId": "LTC-BTC"}, "connId": "a"}
    assert okx.handle_message(wire(other), RECV_NS) == []
    unsub = {
        "event": "unsubscribe",
        "arg": {"channel": "books", "instId": "BTC-USDT"},
        "connId": "a",
    }
    assert okx.handle_message(wire(unsub), RECV_NS) == []


def test_an_error_is_a_venue_error(wire: Wire) -> None:
    error = {
        "event": "error",
        "code": "60018",
        "msg": "Wrong URL or channel:books,instId:ETH-XYZ doesn't exist.",
        "connId": "a4d3ae55",
    }
    events = adapter().handle_message(wire(error), RECV_NS)
    assert len(events) == 1
    assert isinstance(events[0], VenueError)
    assert "60018" in events[0].message
    assert "ETH-XYZ" in events[0].message


def test_the_service_upgrade_notice_requests_a_reconnect(wire: Wire) -> None:
    notice = {
        "event": "notice",
        "code": "64008",
        "msg": "The connection will soon be closed for a service upgrade. Please reconnect.",
        "connId": "a4d3ae55",
    }
    events = synced(wire).handle_message(wire(notice), RECV_NS)
    assert len(events) == 1
    assert isinstance(events[0], ReconnectRequested)
    assert "64008" in events[0].reason


def test_another_notice_is_reported_not_obeyed(wire: Wire) -> None:
    notice = {"event": "notice", "code": "69999", "msg": "something new", "connId": "a"}
    events = adapter().handle_message(wire(notice), RECV_NS)
    assert [type(event) for event in events] == [VenueError]


# --- malformed input --------------------------------------------------------------------------


def _with(message: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = dict(message["data"][0])
    for key, value in fields.items():
        if value is _MISSING:
            del body[key]
        else:
            body[key] = value
    return {**message, "data": [body]}


_MISSING = object()
GOOD_UPDATE = update(100, 101, [["0.035001", "1", "0", "1"]], [["0.03501", "0", "0", "0"]])

MALFORMED: dict[str, str | dict[str, Any]] = {
    "not json": '{"arg": {"channel": "books"',
    "not an object": "[1, 2]",
    "unknown event": {"event": "login", "code": "0"},
    "unknown action": {**GOOD_UPDATE, "action": "partial"},
    "another channel": {**GOOD_UPDATE, "arg": {"channel": "books5", "instId": "ETH-BTC"}},
    "another instrument": {**GOOD_UPDATE, "arg": {"channel": "books", "instId": "LTC-BTC"}},
    "arg not an object": {**GOOD_UPDATE, "arg": ["books", "ETH-BTC"]},
    "data not a list": {**GOOD_UPDATE, "data": GOOD_UPDATE["data"][0]},
    "data empty": {**GOOD_UPDATE, "data": []},
    "data entry not an object": {**GOOD_UPDATE, "data": [[1]]},
    "no seqId": _with(GOOD_UPDATE, seqId=_MISSING),
    "seqId as text": _with(GOOD_UPDATE, seqId="101"),
    "prevSeqId a float": _with(GOOD_UPDATE, prevSeqId=100.0),
    "prevSeqId a bool": _with(GOOD_UPDATE, prevSeqId=True),
    "negative seqId": _with(GOOD_UPDATE, seqId=-5),
    "bids not a list": _with(GOOD_UPDATE, bids={"0.035001": "1"}),
    "no asks": _with(GOOD_UPDATE, asks=_MISSING),
    "level not a list": _with(GOOD_UPDATE, bids=["0.035001"]),
    "level too short": _with(GOOD_UPDATE, bids=[["0.035001"]]),
    "numbers not strings": _with(GOOD_UPDATE, bids=[[0.035001, 1.0, "0", "1"]]),
    "non-numeric price": _with(GOOD_UPDATE, bids=[["abc", "1", "0", "1"]]),
    "zero price": _with(GOOD_UPDATE, bids=[["0", "1", "0", "1"]]),
    "negative size": _with(GOOD_UPDATE, asks=[["0.03502", "-1", "0", "1"]]),
    "NaN price": _with(GOOD_UPDATE, bids=[["NaN", "1", "0", "1"]]),
    "infinite size": _with(GOOD_UPDATE, asks=[["0.03502", "Infinity", "0", "1"]]),
    "a bad level after good ones": _with(
        GOOD_UPDATE, bids=[["0.035001", "1", "0", "1"], ["0.0349", "x", "0", "1"]]
    ),
    "snapshot with two books": {**snapshot(), "data": snapshot()["data"] * 2},
    "snapshot bids out of order": snapshot(bids=list(reversed(bids(5)))),
    "snapshot with a repeated price": snapshot(asks=[asks(1)[0], asks(1)[0]]),
    "snapshot with a zero size": snapshot(bids=[["0.035", "0", "0", "0"], *bids()[1:]]),
    "snapshot one-sided": snapshot(asks=[]),
    "snapshot empty": snapshot(bids=[], asks=[]),
}


@pytest.mark.parametrize("case", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_messages_raise_and_leave_the_book_untouched(
    wire: Wire, case: str | dict[str, Any]
) -> None:
    okx = synced(wire)
    message = wire.text(case) if isinstance(case, str) else wire(case)
    with pytest.raises(MalformedMessageError) as excinfo:
        okx.handle_message(message, RECV_NS)
    assert str(excinfo.value)
    # The book and its chain are as before: the next update in sequence applies on top.
    follow = update(100, 101, [["0.0350015", "1", "0", "1"]])
    event = only_book(okx.handle_message(wire(follow), RECV_NS))
    assert event.bids == ((0.0350015, 1.0), *floats(bids()[:9]))
    assert event.asks == floats(asks()[:10])


def test_a_crossed_snapshot_is_a_crossed_book_error(wire: Wire) -> None:
    okx = synced(wire)
    with pytest.raises(CrossedBookError):
        okx.handle_message(wire(snapshot(bids=[["0.0351", "1", "0", "1"], *bids()])), RECV_NS)


def test_an_integer_beyond_64_bits_is_malformed(wire: Wire) -> None:
    text = json.dumps(update(100, 101)).replace('"seqId": 101', '"seqId": 99999999999999999999999')
    with pytest.raises(MalformedMessageError):
        synced(wire).handle_message(wire.text(text), RECV_NS)
