"""Coinbase adapter: subscriptions, the level2 book from snapshot and updates, continuity of
the connection-wide sequence_num, heartbeats, acks and errors, and malformed messages.

Messages are in Coinbase Advanced Trade's wire format (its WebSocket docs and AsyncAPI):
``{"channel": "l2_data", "client_id": "", "timestamp": …, "sequence_num": N, "events":
[{"type": "snapshot" | "update", "product_id": "ETH-BTC", "updates": [{"side": "bid" |
"offer", "event_time": …, "price_level": "…", "new_quantity": "…"}]}]}``. Every message is
fed both as bytes and as str.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aggtrio.model import VenueBook
from aggtrio.symbols import venue_pair
from aggtrio.venues.base import (
    CrossedBookError,
    MalformedMessageError,
    Resync,
    Subscribed,
    VenueError,
)
from aggtrio.venues.coinbase import CoinbaseAdapter

from .wire import Wire

RECV_NS = 1_675_974_770_714_964_855
TIMESTAMP = "2023-02-09T20:32:50.714964855Z"
Levels = list[tuple[str, str]]


class Stream:
    """A Coinbase connection's messages with the sequence_num counting up, as on the wire."""

    def __init__(self, wire: Wire, start: int = 0) -> None:
        self.wire = wire
        self.next = start

    def message(self, channel: str, events: list[Any], sequence: int | None = None) -> Any:
        if sequence is None:
            sequence, self.next = self.next, self.next + 1
        return self.wire(
            {
                "channel": channel,
                "client_id": "",
                "timestamp": TIMESTAMP,
                "sequence_num": sequence,
                "events": events,
            }
        )

    def l2(
        self,
        kind: str,
        bids: Levels | None = None,
        asks: Levels | None = None,
        product: str = "ETH-BTC",
        sequence: int | None = None,
    ) -> Any:
        event = l2_event(kind, bids or [], asks or [], product)
        return self.message("l2_data", [event], sequence)

    def ack(self, level2: list[str]) -> Any:
        current = {"level2": level2, "heartbeats": ["heartbeats"]}
        return self.message("subscriptions", [{"subscriptions": current}])

    def heartbeat(self, counter: int | str) -> Any:
        event = {
            "current_time": "2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105",
            "heartbeat_counter": counter,
        }
        return self.message("heartbeats", [event])


def l2_event(kind: str, bids: Levels, asks: Levels, product: str = "ETH-BTC") -> dict[str, Any]:
    def entry(side: str, price: str, size: str) -> dict[str, str]:
        return {"side": side, "event_time": TIMESTAMP, "price_level": price, "new_quantity": size}

    updates = [entry("bid", p, q) for p, q in bids] + [entry("offer", p, q) for p, q in asks]
    return {"type": kind, "product_id": product, "updates": updates}


def bid_levels(n: int, top: float = 0.07000) -> Levels:
    return [(f"{top - i * 0.00001:.5f}", f"{1.5 + i / 8:.8f}") for i in range(n)]


def ask_levels(n: int, top: float = 0.07010) -> Levels:
    return [(f"{top + i * 0.00001:.5f}", f"{0.25 + i / 8:.8f}") for i in range(n)]


def floats(levels: Levels) -> tuple[tuple[float, float], ...]:
    return tuple((float(p), float(q)) for p, q in levels)


def adapter(*symbols: str, depth: int = 10) -> CoinbaseAdapter:
    return CoinbaseAdapter(symbols or ("ETHBTC",), depth)


def synced(
    wire: Wire, *symbols: str, depth: int = 10, levels: int = 50
) -> tuple[CoinbaseAdapter, Stream]:
    """An adapter that has had its ack and a snapshot of every symbol."""
    coinbase = adapter(*symbols, depth=depth)
    stream = Stream(wire)
    products = [venue_pair("coinbase", s) for s in coinbase.symbols]
    coinbase.handle_message(stream.ack(products), RECV_NS)
    for product in products:
        events = coinbase.handle_message(
            stream.l2("snapshot", bid_levels(levels), ask_levels(levels), product), RECV_NS
        )
        assert [type(e) for e in events] == [VenueBook]
    return coinbase, stream


def book_of(events: list[Any]) -> VenueBook:
    assert len(events) == 1
    assert isinstance(events[0], VenueBook)
    return events[0]


# --- connecting -------------------------------------------------------------------------------


def test_default_endpoint_is_the_real_advanced_trade_host() -> None:
    assert CoinbaseAdapter.default_url == "wss://advanced-trade-ws.coinbase.com"
    assert adapter().connect_url("ws://127.0.0.1:9003/") == "ws://127.0.0.1:9003"


def test_subscribes_to_level2_and_heartbeats_one_channel_per_message() -> None:
    messages = adapter("ETHBTC", "BTCUSDT").subscribe_messages()
    assert [json.loads(m) for m in messages] == [
        {"type": "subscribe", "product_ids": ["ETH-BTC", "BTC-USDT"], "channel": "level2"},
        {"type": "subscribe", "product_ids": ["ETH-BTC", "BTC-USDT"], "channel": "heartbeats"},
    ]


def test_no_client_heartbeat_and_liveness_rests_on_the_one_second_heartbeats() -> None:
    coinbase = adapter()
    assert coinbase.heartbeat_message() is None
    assert CoinbaseAdapter.heartbeat_interval is None
    assert 2.0 <= CoinbaseAdapter.default_liveness_timeout <= 10.0


def test_a_break_is_resynced_by_reconnecting() -> None:
    # sequence_num is connection-wide: one product cannot be refetched alone.
    assert adapter("ETHBTC", "BTCUSDT").resubscribe_messages("ETHBTC") == []


# --- the book ---------------------------------------------------------------------------------


def test_snapshot_publishes_the_top_depth_of_the_whole_book(wire: Wire) -> None:
    coinbase = adapter(depth=10)
    stream = Stream(wire)
    bids, asks = bid_levels(2000), ask_levels(2000)
    book = book_of(coinbase.handle_message(stream.l2("snapshot", bids, asks), RECV_NS))
    assert book == VenueBook("coinbase", "ETHBTC", floats(bids[:10]), floats(asks[:10]), RECV_NS)


def test_snapshot_levels_in_any_order_are_sorted_best_first(wire: Wire) -> None:
    coinbase = adapter(depth=3)
    stream = Stream(wire)
    bids, asks = bid_levels(5), ask_levels(5)
    message = stream.l2("snapshot", bids[::-1], [asks[2], asks[0], asks[4], asks[1], asks[3]])
    book = book_of(coinbase.handle_message(message, RECV_NS))
    assert book.bids == floats(bids[:3])
    assert book.asks == floats(asks[:3])


def test_updates_set_absolute_sizes_and_zero_deletes(wire: Wire) -> None:
    coinbase, stream = synced(wire, depth=3)
    message = stream.l2(
        "update",
        bids=[("0.07000", "9.5"), ("0.07005", "2")],  # change the best bid, add a better one
        asks=[("0.07010", "0")],  # delete the best offer
    )
    book = book_of(coinbase.handle_message(message, RECV_NS + 1))
    assert book.bids == ((0.07005, 2.0), (0.07, 9.5), (0.06999, 1.625))
    assert book.asks == floats(ask_levels(4)[1:4])
    assert book.recv_ns == RECV_NS + 1


def test_a_deleted_top_level_is_refilled_from_deeper_in_the_book(wire: Wire) -> None:
    coinbase, stream = synced(wire, depth=10, levels=50)
    deletes = [(price, "0") for price, _ in bid_levels(10)]
    book = book_of(coinbase.handle_message(stream.l2("update", bids=deletes), RECV_NS))
    assert book.bids == floats(bid_levels(20)[10:20])


def test_a_change_below_the_top_publishes_nothing(wire: Wire) -> None:
    coinbase, stream = synced(wire, depth=5, levels=50)
    deep = bid_levels(40)[30]
    assert coinbase.handle_message(stream.l2("update", bids=[(deep[0], "7")]), RECV_NS) == []
    # ... but it is kept: once the levels above it go, it shows.
    above = [(price, "0") for price, _ in bid_levels(30)]
    book = book_of(coinbase.handle_message(stream.l2("update", bids=above), RECV_NS))
    assert book.bids[0] == (float(deep[0]), 7.0)


def test_deleting_an_absent_level_changes_nothing(wire: Wire) -> None:
    coinbase, stream = synced(wire)
    assert coinbase.handle_message(stream.l2("update", bids=[("0.05", "0")]), RECV_NS) == []


def test_updates_before_a_snapshot_are_ignored(wire: Wire) -> None:
    coinbase = adapter()
    stream = Stream(wire)
    assert coinbase.handle_message(stream.l2("update", bids=[("0.07", "1")]), RECV_NS) == []
    book = book_of(
        coinbase.handle_message(stream.l2("snapshot", bid_levels(3), ask_levels(3)), RECV_NS)
    )
    assert book.bids == floats(bid_levels(3))


def test_each_product_keeps_its_own_book(wire: Wire) -> None:
    coinbase, stream = synced(wire, "ETHBTC", "BTCUSDT", depth=2)
    message = stream.l2("update", bids=[("0.07001", "3")], product="BTC-USDT")
    book = book_of(coinbase.handle_message(message, RECV_NS))
    assert book.symbol == "BTCUSDT"
    assert book.bids == ((0.07001, 3.0), (0.07, 1.5))


def test_one_message_may_carry_events_for_several_products(wire: Wire) -> None:
    coinbase, stream = synced(wire, "ETHBTC", "BTCUSDT", depth=1)
    message = stream.message(
        "l2_data",
        [
            l2_event("update", [("0.07003", "1")], [], "ETH-BTC"),
            l2_event("update", [], [("0.07009", "2")], "BTC-USDT"),
        ],
    )
    events = coinbase.handle_message(message, RECV_NS)
    assert [(e.symbol, e.bids, e.asks) for e in events if isinstance(e, VenueBook)] == [
        ("ETHBTC", ((0.07003, 1.0),), ((0.0701, 0.25),)),
        ("BTCUSDT", ((0.07, 1.5),), ((0.07009, 2.0),)),
    ]


def test_updates_that_cross_the_book_are_a_break(wire: Wire) -> None:
    coinbase, stream = synced(wire)
    events = coinbase.handle_message(stream.l2("update", bids=[("0.07020", "1")]), RECV_NS)
    assert len(events) == 1
    assert isinstance(events[0], Resync)
    assert "crossed" in events[0].reason


# --- continuity -------------------------------------------------------------------------------


def resyncs(events: list[Any]) -> list[Resync]:
    return [e for e in events if isinstance(e, Resync)]


@pytest.mark.parametrize("fault", ["gap", "duplicate", "backwards"])
def test_a_sequence_break_is_one_resync_then_recovery_on_the_next_snapshot(
    wire: Wire, fault: str
) -> None:
    coinbase, stream = synced(wire, "ETHBTC", "BTCUSDT")
    last = stream.next - 1
    if fault == "gap":
        stream.next += 1
        broken = stream.l2("update", bids=[("0.06", "1")], product="BTC-USDT")
    elif fault == "duplicate":
        broken = stream.l2("update", bids=[("0.06", "1")], product="BTC-USDT", sequence=last)
    else:
        broken = stream.l2("update", bids=[("0.06", "1")], product="BTC-USDT", sequence=last - 2)
    events = coinbase.handle_message(broken, RECV_NS)
    [resync] = resyncs(events)
    assert events == [resync]
    assert resync.symbol == "BTCUSDT"  # the product whose message showed the break
    assert {"gap": "gap", "duplicate": "duplicate", "backwards": "went back"}[fault] in (
        resync.reason
    )
    # Every product's book is dropped: later updates publish nothing, and further
    # breaks on this connection add no Resync.
    assert coinbase.handle_message(stream.l2("update", bids=[("0.07003", "1")]), RECV_NS) == []
    stream.next += 5
    assert coinbase.handle_message(stream.heartbeat(1), RECV_NS) == []
    # A fresh snapshot brings a product back; the other stays out until its own.
    book = book_of(
        coinbase.handle_message(stream.l2("snapshot", bid_levels(3), ask_levels(3)), RECV_NS)
    )
    assert book.symbol == "ETHBTC"
    assert coinbase.handle_message(stream.l2("update", [], [], "BTC-USDT"), RECV_NS) == []
    # After recovery, a new break is a new Resync.
    stream.next += 1
    [again] = resyncs(coinbase.handle_message(stream.heartbeat(2), RECV_NS))
    assert again.symbol == "ETHBTC"


def test_a_break_before_any_snapshot_still_resyncs(wire: Wire) -> None:
    # The missing message may have been a snapshot, without which a product never syncs.
    coinbase = adapter("ETHBTC", "BTCUSDT")
    stream = Stream(wire)
    coinbase.handle_message(stream.ack(["ETH-BTC", "BTC-USDT"]), RECV_NS)
    stream.next += 1
    [resync] = resyncs(coinbase.handle_message(stream.heartbeat(1), RECV_NS))
    assert resync.symbol == "ETHBTC"


def test_sequence_counts_across_all_channels(wire: Wire) -> None:
    coinbase, stream = synced(wire)
    for counter in range(1, 4):
        assert coinbase.handle_message(stream.heartbeat(counter), RECV_NS) == []
    book_of(coinbase.handle_message(stream.l2("update", bids=[("0.07003", "1")]), RECV_NS))
    assert coinbase.handle_message(stream.message("status", []), RECV_NS) == []
    book_of(coinbase.handle_message(stream.l2("update", bids=[("0.07004", "1")]), RECV_NS))


def test_the_first_sequence_num_of_a_connection_is_the_baseline(wire: Wire) -> None:
    coinbase = adapter()
    stream = Stream(wire, start=17)
    assert coinbase.handle_message(stream.ack(["ETH-BTC"]), RECV_NS) == [Subscribed("ETHBTC")]
    book_of(coinbase.handle_message(stream.l2("snapshot", bid_levels(2), ask_levels(2)), RECV_NS))
    fresh = coinbase.for_new_connection()
    assert fresh.handle_message(Stream(wire).ack(["ETH-BTC"]), RECV_NS) == [Subscribed("ETHBTC")]


def test_a_skipped_heartbeat_counter_is_a_break(wire: Wire) -> None:
    coinbase, stream = synced(wire)
    assert coinbase.handle_message(stream.heartbeat("41"), RECV_NS) == []
    assert coinbase.handle_message(stream.heartbeat(42), RECV_NS) == []
    [resync] = resyncs(coinbase.handle_message(stream.heartbeat(44), RECV_NS))
    assert "heartbeat_counter" in resync.reason


# --- control messages -------------------------------------------------------------------------


def test_subscriptions_ack_reports_each_of_our_products_once(wire: Wire) -> None:
    coinbase = adapter("ETHBTC", "BTCUSDT")
    stream = Stream(wire)
    assert coinbase.handle_message(stream.ack(["ETH-BTC"]), RECV_NS) == [Subscribed("ETHBTC")]
    assert coinbase.handle_message(stream.ack(["ETH-BTC", "BTC-USDT", "SOL-USD"]), RECV_NS) == [
        Subscribed("BTCUSDT")
    ]
    heartbeats_only = stream.message("subscriptions", [{"subscriptions": {"heartbeats": ["x"]}}])
    assert coinbase.handle_message(heartbeats_only, RECV_NS) == []


def test_heartbeats_produce_no_event(wire: Wire) -> None:
    coinbase, stream = synced(wire)
    assert coinbase.handle_message(stream.heartbeat(1), RECV_NS) == []


def test_an_error_is_a_venue_error(wire: Wire) -> None:
    message = wire({"type": "error", "message": "failure to subscribe"})
    [error] = adapter().handle_message(message, RECV_NS)
    assert isinstance(error, VenueError)
    assert "failure to subscribe" in error.message


def test_unknown_channels_are_ignored(wire: Wire) -> None:
    # "New message types can be added at any time. Clients are expected to ignore them."
    coinbase, stream = synced(wire)
    assert coinbase.handle_message(stream.message("ticker", [{"tickers": []}]), RECV_NS) == []


# --- malformed messages -----------------------------------------------------------------------


def entry(**fields: Any) -> dict[str, Any]:
    return {"side": "bid", "event_time": TIMESTAMP, "price_level": "0.07", **fields}


MALFORMED_EVENTS: dict[str, Any] = {
    "not an object": ["update"],
    "unknown product": {"type": "update", "product_id": "LTC-BTC", "updates": []},
    "unknown type": {"type": "delta", "product_id": "ETH-BTC", "updates": []},
    "no updates": {"type": "update", "product_id": "ETH-BTC"},
    "updates not a list": {"type": "update", "product_id": "ETH-BTC", "updates": {}},
    "update not an object": l2_event("update", [], []) | {"updates": [["0.07", "1"]]},
    "no size": l2_event("update", [], []) | {"updates": [entry()]},
    "numeric size": l2_event("update", [], []) | {"updates": [entry(new_quantity=1.0)]},
    "non-numeric size": l2_event("update", [], []) | {"updates": [entry(new_quantity="abc")]},
    "negative price": l2_event("update", [], []) | {"updates": [entry(price_level="-0.07",
                                                                      new_quantity="1")]},
    "zero price": l2_event("update", [], []) | {"updates": [entry(price_level="0",
                                                                  new_quantity="1")]},
    "nan size": l2_event("update", [], []) | {"updates": [entry(new_quantity="NaN")]},
    "infinite size": l2_event("update", [], []) | {"updates": [entry(new_quantity="inf")]},
    "bad side": l2_event("update", [], []) | {"updates": [entry(side="ask", new_quantity="1")]},
    "empty snapshot": l2_event("snapshot", [], []),
    "one-sided snapshot": l2_event("snapshot", bid_levels(3), []),
    "all-zero side": l2_event("snapshot", bid_levels(3), [("0.0701", "0")]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED_EVENTS))
def test_a_malformed_event_leaves_book_and_sequence_untouched(wire: Wire, case: str) -> None:
    coinbase, stream = synced(wire, depth=3)
    good_event = l2_event("update", [("0.07005", "1")], [])
    message = stream.message("l2_data", [good_event, MALFORMED_EVENTS[case]])
    with pytest.raises(MalformedMessageError):
        coinbase.handle_message(message, RECV_NS)
    # Nothing of it was applied (not even its valid first event), and its number was
    # not taken: the next message carries it without a gap.
    stream.next -= 1
    book = book_of(coinbase.handle_message(stream.l2("update", bids=[("0.07001", "1")]), 5))
    assert book.bids == ((0.07001, 1.0), (0.07, 1.5), (0.06999, 1.625))


def test_a_crossed_snapshot_is_malformed_and_counted_as_crossed(wire: Wire) -> None:
    coinbase = adapter()
    stream = Stream(wire)
    with pytest.raises(CrossedBookError):
        coinbase.handle_message(
            stream.l2("snapshot", [("0.0702", "1")], [("0.0701", "1")]), RECV_NS
        )


@pytest.mark.parametrize(
    "message",
    [
        b"\xff\x00",
        "not json",
        "[1, 2]",
        '{"sequence_num": 1}',
        '{"channel": "l2_data", "sequence_num": 1}',
        '{"channel": "l2_data", "sequence_num": 1, "events": []}',
        '{"channel": "heartbeats", "sequence_num": 1, "events": [{"heartbeat_counter": -1}]}',
        '{"channel": "heartbeats", "sequence_num": 1, "events": [{"heartbeat_counter": "٣"}]}',
        '{"channel": "heartbeats", "sequence_num": 1, "events": {}}',
        '{"channel": "subscriptions", "sequence_num": 1, "events": [{"subscriptions": []}]}',
        '{"channel": "subscriptions", "sequence_num": 1, "events": [{"subscriptions":'
        ' {"level2": "ETH-BTC"}}]}',
        '{"channel": "heartbeats", "sequence_num": "1", "events": [{"heartbeat_counter": 1}]}',
        '{"channel": "heartbeats", "sequence_num": -1, "events": [{"heartbeat_counter": 1}]}',
        '{"channel": "status", "sequence_num": null, "events": []}',
    ],
)
def test_malformed_control_messages_are_rejected(wire: Wire, message: str | bytes) -> None:
    coinbase, _stream = synced(wire)
    raw = message if isinstance(message, bytes) else wire.text(message)
    with pytest.raises(MalformedMessageError):
        coinbase.handle_message(raw, RECV_NS)
