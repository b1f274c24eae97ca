"""Kraken adapter: URL, (re)subscribe and ping, the v2 book with its CRC32, control messages.

Messages are in Kraken's WebSocket v2 wire format (docs.kraken.com, "Book (Level 2)" and the
"Spot Websockets (v2) Book Checksum" guide): prices and quantities are JSON *numbers* whose
text carries the pair's precision, so they are written here as raw text, not through a JSON
library. The expected checksums come from :class:`ReferenceBook`, written from the guide
independently of the adapter. Every message is fed both as bytes and as str.
"""

from __future__ import annotations

import json
import zlib
from decimal import Decimal
from typing import Any

import pytest

from aggtrio.config import parse_venue_url
from aggtrio.model import VenueBook
from aggtrio.venues.base import (
    AdapterEvent,
    CrossedBookError,
    MalformedMessageError,
    Resync,
    Subscribed,
    VenueError,
)
from aggtrio.venues.kraken import KrakenAdapter, subscription_depth

from .wire import Wire

RECV_NS = 1_700_000_000_000_000_000
# (price, qty) as the wire prints them.
TextSide = list[tuple[str, str]]


class ReferenceBook:
    """A client's book kept the way Kraken's guide describes, in exact decimals."""

    def __init__(self, depth: int = 10, price_decimals: int = 5, qty_decimals: int = 8) -> None:
        self.depth = depth
        self.price_decimals = price_decimals
        self.qty_decimals = qty_decimals
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}

    def apply(self, bids: TextSide, asks: TextSide) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, qty in levels:
                if Decimal(qty) == 0:
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = Decimal(qty)
        for book_side, descending in ((self.bids, True), (self.asks, False)):
            for beyond in sorted(book_side, reverse=descending)[self.depth :]:
                del book_side[beyond]

    def sorted(self, descending: bool) -> list[tuple[Decimal, Decimal]]:
        side = self.bids if descending else self.asks
        return sorted(side.items(), reverse=descending)

    def checksum(self) -> int:
        def text(value: Decimal, decimals: int) -> str:
            return f"{value:.{decimals}f}".replace(".", "").lstrip("0")

        levels = self.sorted(False)[:10] + self.sorted(True)[:10]
        return zlib.crc32(
            "".join(
                text(p, self.price_decimals) + text(q, self.qty_decimals) for p, q in levels
            ).encode()
        )

    def top(self, depth: int) -> tuple[tuple[tuple[float, float], ...], ...]:
        return tuple(
            tuple((float(p), float(q)) for p, q in self.sorted(descending)[:depth])
            for descending in (True, False)
        )


def side_json(levels: TextSide) -> str:
    return "[" + ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels) + "]"


def book_message(
    kind: str, bids: TextSide, asks: TextSide, checksum: int | str, *, pair: str = "ETH/BTC"
) -> str:
    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{pair}",'
        f'"bids":{side_json(bids)},"asks":{side_json(asks)},"checksum":{checksum},'
        f'"timestamp":"2026-11-30T06:50:10.123456Z"}}]}}'
    )


def bid_side(n: int = 10) -> TextSide:
    return [(f"0.{5390 - i:05d}", f"{1.5 + i / 8:.8f}") for i in range(n)]


def ask_side(n: int = 10) -> TextSide:
    return [(f"0.{5400 + i:05d}", f"{0.25 + i / 8:.8f}") for i in range(n)]


class Session:
    """An adapter fed by a ReferenceBook: messages carry the checksum Kraken would send."""

    def __init__(self, wire: Wire, *symbols: str, depth: int = 10) -> None:
        self.wire = wire
        self.adapter = KrakenAdapter(symbols or ("ETHBTC",), depth)
        self.ref = ReferenceBook(subscription_depth(depth))

    def message(self, kind: str, bids: TextSide, asks: TextSide) -> str | bytes:
        """The message Kraken sends for this change; the reference book takes it."""
        if kind == "snapshot":
            self.ref.bids, self.ref.asks = {}, {}
        self.ref.apply(bids, asks)
        return self.wire.text(book_message(kind, bids, asks, self.ref.checksum()))

    def send(self, kind: str, bids: TextSide, asks: TextSide) -> list[Any]:
        return self.adapter.handle_message(self.message(kind, bids, asks), RECV_NS)

    def expected(self) -> list[Any]:
        bids, asks = self.ref.top(self.adapter.depth)
        return [VenueBook("kraken", "ETHBTC", bids, asks, RECV_NS)]


def control(wire: Wire, value: dict[str, Any]) -> list[AdapterEvent]:
    return KrakenAdapter(("ETHBTC", "BTCUSDT"), 10).handle_message(wire(value), RECV_NS)


# --- connecting -------------------------------------------------------------------------------


def test_default_endpoint_is_the_real_v2_endpoint() -> None:
    kraken = KrakenAdapter(("ETHBTC",), 10)
    assert kraken.connect_url(KrakenAdapter.default_url) == "wss://ws.kraken.com/v2"
    # A base endpoint, like every venue's: the config refuses paths in venue URLs.
    assert parse_venue_url(f"kraken={KrakenAdapter.default_url}") == (
        "kraken",
        KrakenAdapter.default_url,
    )


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("wss://ws.kraken.com/v2", "wss://ws.kraken.com/v2"),
        ("wss://ws.kraken.com/v2/", "wss://ws.kraken.com/v2"),
        ("ws://127.0.0.1:9003", "ws://127.0.0.1:9003/v2"),
        ("ws://127.0.0.1:9003/", "ws://127.0.0.1:9003/v2"),
    ],
)
def test_connect_url_is_the_v2_path(base: str, expected: str) -> None:
    assert KrakenAdapter(("ETHBTC",), 10).connect_url(base) == expected


@pytest.mark.parametrize(
    ("depth", "subscribed"),
    [(1, 10), (10, 10), (11, 25), (25, 25), (26, 100), (500, 500), (1000, 1000), (5000, 1000)],
)
def test_one_subscribe_for_all_pairs_at_the_smallest_covering_depth(
    depth: int, subscribed: int
) -> None:
    messages = KrakenAdapter(("ETHBTC", "BTCUSDT"), depth).subscribe_messages()
    assert [json.loads(m) for m in messages] == [
        {
            "method": "subscribe",
            "params": {
                "channel": "book",
                "symbol": ["ETH/BTC", "BTC/USDT"],
                "depth": subscribed,
                "snapshot": True,
            },
            "req_id": 1,
        }
    ]


def test_resubscribe_is_unsubscribe_then_subscribe_of_that_pair_only() -> None:
    kraken = KrakenAdapter(("ETHBTC", "BTCUSDT"), 10)
    kraken.subscribe_messages()
    unsubscribe, subscribe = (json.loads(m) for m in kraken.resubscribe_messages("BTCUSDT"))
    assert unsubscribe == {
        "method": "unsubscribe",
        "params": {"channel": "book", "symbol": ["BTC/USDT"], "depth": 10},
        "req_id": 2,
    }
    assert subscribe == {
        "method": "subscribe",
        "params": {"channel": "book", "symbol": ["BTC/USDT"], "depth": 10, "snapshot": True},
        "req_id": 3,
    }


def test_ping_and_liveness_fit_kraken_heartbeats() -> None:
    message = KrakenAdapter(("ETHBTC",), 10).heartbeat_message()
    assert json.loads(message) == {"method": "ping"}
    interval = KrakenAdapter.heartbeat_interval
    assert interval is not None
    assert interval > 0
    # Kraken sends a heartbeat every second while subscribed: several may go missing first.
    assert KrakenAdapter.default_liveness_timeout >= 3.0


# --- snapshots and updates --------------------------------------------------------------------


@pytest.mark.parametrize("depth", [10, 3])
def test_snapshot_gives_the_top_depth_as_floats(wire: Wire, depth: int) -> None:
    session = Session(wire, depth=depth)
    events = session.send("snapshot", bid_side(10), ask_side(10))
    assert events == session.expected()
    book = events[0]
    assert len(book.bids) == len(book.asks) == depth
    assert book.bids[0] == (0.0539, 1.5)
    assert book.asks[0] == (0.054, 0.25)
    assert all(type(x) is float for level in book.bids + book.asks for x in level)


def test_update_changes_inserts_and_deletes_levels_in_order(wire: Wire) -> None:
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    bids = [("0.05390", "2.00000000"), ("0.05385", "0.00000000"), ("0.05392", "0.10000000")]
    # The same level twice in one message: the later entry wins.
    asks = [("0.05400", "0.00000000"), ("0.05401", "3.00000000"), ("0.05401", "4.00000000")]
    events = session.send("update", bids, asks)
    assert events == session.expected()
    assert events[0].bids[:2] == ((0.05392, 0.1), (0.0539, 2.0))
    assert events[0].asks[0] == (0.05401, 4.0)
    assert 0.05385 not in [price for price, _ in events[0].bids]


def test_a_change_below_the_top_publishes_nothing_but_is_checked(wire: Wire) -> None:
    session = Session(wire, depth=3)
    session.send("snapshot", bid_side(), ask_side())
    assert session.send("update", [("0.05381", "9.00000000")], []) == []
    # The unpublished change was applied: a checksum over it still matches.
    assert session.send("update", [("0.05390", "7.00000000")], []) == session.expected()


def test_the_book_is_cut_to_the_subscribed_depth_and_refilled_only_by_kraken(
    wire: Wire,
) -> None:
    session = Session(wire)
    session.send("snapshot", bid_side(10), ask_side(10))
    # A new best bid makes 11: Kraken sends no delete for the 11th, the client drops it.
    events = session.send("update", [("0.05395", "1.00000000")], [])
    assert events == session.expected()
    assert len(events[0].bids) == 10
    assert events[0].bids[-1][0] == 0.05382
    # The best bid goes; the dropped level must not come back by itself: Kraken sends it.
    events = session.send("update", [("0.05395", "0"), ("0.05381", "2.12500000")], [])
    assert events == session.expected()
    assert events[0].bids[-1] == (0.05381, 2.125)


def test_a_deleted_top_level_is_refilled_from_the_whole_subscribed_book(wire: Wire) -> None:
    session = Session(wire, depth=5)  # subscribes 10 levels, publishes 5
    session.send("snapshot", bid_side(10), ask_side(10))
    events = session.send("update", [("0.05390", "0")], [])
    assert events == session.expected()
    assert events[0].bids[-1][0] == 0.05385  # the 6th level, known from the snapshot


# --- continuity -------------------------------------------------------------------------------


UPDATES: list[tuple[TextSide, TextSide]] = [
    ([("0.05390", "2.00000000")], []),
    ([], [("0.05400", "1.00000000")]),
    ([("0.05389", "0")], [("0.05401", "0.50000000")]),
    ([("0.05391", "0.30000000")], []),
]


def resync_then_recover(session: Session, events: list[Any]) -> None:
    """`events` (the first messages after a break) hold one Resync; later updates are ignored
    and the next snapshot brings the book back."""
    assert [type(e) for e in events] == [Resync]
    assert events[0].symbol == "ETHBTC"
    assert "checksum mismatch" in events[0].reason
    assert session.send("update", [("0.05388", "5.00000000")], []) == []
    assert session.send("update", [], [("0.05402", "0")]) == []
    assert session.send("snapshot", bid_side(), ask_side()) == session.expected()
    assert session.send("update", [("0.05390", "9.00000000")], []) == session.expected()


def test_a_gap_is_one_resync_then_recovery(wire: Wire) -> None:
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    session.message("update", *UPDATES[0])  # lost on the way
    resync_then_recover(session, session.send("update", *UPDATES[1]))


def test_out_of_order_updates_are_one_resync_then_recovery(wire: Wire) -> None:
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    first = session.message("update", *UPDATES[0])
    second = session.message("update", *UPDATES[1])
    events = session.adapter.handle_message(second, RECV_NS)
    events += session.adapter.handle_message(first, RECV_NS)  # ignored: already broken
    resync_then_recover(session, events)


def test_a_bad_checksum_is_one_resync_then_recovery(wire: Wire) -> None:
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    session.ref.apply(*UPDATES[0])
    message = book_message("update", *UPDATES[0], (session.ref.checksum() + 1) % 2**32)
    resync_then_recover(session, session.adapter.handle_message(wire.text(message), RECV_NS))


def test_a_snapshot_with_a_wrong_checksum_is_a_resync(wire: Wire) -> None:
    kraken = KrakenAdapter(("ETHBTC",), 10)
    ref = ReferenceBook()
    ref.apply(bid_side(), ask_side())
    message = book_message("snapshot", bid_side(), ask_side(), ref.checksum() ^ 4)
    events = kraken.handle_message(wire.text(message), RECV_NS)
    assert [type(e) for e in events] == [Resync]


def test_a_duplicated_update_is_harmless_and_needs_no_resync(wire: Wire) -> None:
    """Quantities are absolute: the same update twice leaves the book as it was after one,
    and the checksum (rightly) agrees. Kraken has no sequence number to see it by."""
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    message = session.message("update", *UPDATES[2])
    assert session.adapter.handle_message(message, RECV_NS) == session.expected()
    assert session.adapter.handle_message(message, RECV_NS) == []  # top unchanged
    assert session.send("update", *UPDATES[3]) == session.expected()


def test_a_break_on_one_symbol_leaves_the_other_alone(wire: Wire) -> None:
    kraken = KrakenAdapter(("ETHBTC", "BTCUSDT"), 10)
    usdt_bids, usdt_asks = [("90000.10", "0.50000")], [("90000.20", "0.25000")]
    usdt = ReferenceBook(price_decimals=2, qty_decimals=5)
    usdt.apply(usdt_bids, usdt_asks)
    message = book_message("snapshot", usdt_bids, usdt_asks, usdt.checksum(), pair="BTC/USDT")
    [book] = kraken.handle_message(wire.text(message), 1)
    assert isinstance(book, VenueBook)
    assert book.symbol == "BTCUSDT"
    ref = ReferenceBook()
    ref.apply(bid_side(), ask_side())
    message = book_message("snapshot", bid_side(), ask_side(), ref.checksum())
    kraken.handle_message(wire.text(message), 1)
    bad = book_message("update", [("0.05390", "1.00000000")], [], 12345)
    assert [type(e) for e in kraken.handle_message(wire.text(bad), 1)] == [Resync]
    usdt.apply([("90000.10", "0.75000")], [])
    update = book_message("update", [("90000.10", "0.75000")], [], usdt.checksum(), pair="BTC/USDT")
    assert kraken.handle_message(wire.text(update), 2) == [
        VenueBook("kraken", "BTCUSDT", ((90000.1, 0.75),), ((90000.2, 0.25),), 2)
    ]


def test_a_new_connection_starts_unsynced(wire: Wire) -> None:
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    fresh = session.adapter.for_new_connection()
    assert fresh.handle_message(session.message("update", *UPDATES[0]), RECV_NS) == []


# --- precision --------------------------------------------------------------------------------


def test_numbers_printed_without_trailing_zeros_are_checked_at_the_pair_precision(
    wire: Wire,
) -> None:
    """Kraken's own examples print 0.566 for a four-decimal pair; its checksum still counts
    the pair's precision."""
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    events = session.send("update", [("0.0539", "2.5"), ("0.05386", "12")], [("0.054", "1")])
    assert events == session.expected()
    assert events[0].bids[0] == (0.0539, 2.5)


def test_a_precision_never_shown_in_full_is_found_from_the_checksum(wire: Wire) -> None:
    # Every price of this snapshot happens to end in 0 at the pair's 5 decimals.
    bids = [(f"0.0{539 - i}0", "1.00000000") for i in range(10)]
    asks = [(f"0.0{540 + i}0", "1.25000000") for i in range(10)]
    session = Session(wire)
    trimmed = [(p.rstrip("0"), q) for p, q in bids], [(p.rstrip("0"), q) for p, q in asks]
    session.ref.apply(bids, asks)
    message = book_message("snapshot", *trimmed, session.ref.checksum())
    events = session.adapter.handle_message(wire.text(message), RECV_NS)
    assert events == session.expected()
    assert session.send("update", [("0.05385", "2.00000000")], []) == session.expected()


def test_exponent_notation_is_read_as_its_plain_decimal(wire: Wire) -> None:
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    message = session.message("update", [("0.05390", "2.00000000")], [])
    text = message if isinstance(message, str) else message.decode()
    assert (
        session.adapter.handle_message(
            wire.text(text.replace("2.00000000", "2.00000000E0")), RECV_NS
        )
        == session.expected()
    )


# --- control messages -------------------------------------------------------------------------


def test_heartbeat_and_pong_give_no_event(wire: Wire) -> None:
    assert control(wire, {"channel": "heartbeat"}) == []
    pong = {"method": "pong", "req_id": 7, "time_in": "t", "time_out": "t"}
    assert control(wire, pong) == []


def test_subscribe_ack_is_subscribed_for_our_pairs_only(wire: Wire) -> None:
    def ack(pair: str, channel: str = "book") -> dict[str, Any]:
        result = {"channel": channel, "depth": 10, "snapshot": True, "symbol": pair}
        return {"method": "subscribe", "result": result, "success": True, "req_id": 1}

    assert control(wire, ack("BTC/USDT")) == [Subscribed("BTCUSDT")]
    assert control(wire, ack("LTC/BTC")) == []
    assert control(wire, ack("ETH/BTC", channel="ticker")) == []
    unsubscribed = {"method": "unsubscribe", "result": {"channel": "book"}, "success": True}
    assert control(wire, unsubscribed) == []


def test_an_error_reply_is_a_venue_error(wire: Wire) -> None:
    reply = {
        "error": "Currency pair not supported",
        "method": "subscribe",
        "req_id": 1,
        "success": False,
        "symbol": "ETH/BTC",
        "time_in": "2026-11-30T06:50:10.000000Z",
        "time_out": "2026-11-30T06:50:10.000100Z",
    }
    [event] = control(wire, reply)
    assert isinstance(event, VenueError)
    assert "Currency pair not supported" in event.message
    assert "ETH/BTC" in event.message


def test_status_online_is_quiet_and_anything_else_is_reported(wire: Wire) -> None:
    def status(system: str) -> dict[str, Any]:
        entry = {"api_version": "v2", "connection_id": 1, "system": system, "version": "2.0.10"}
        return {"channel": "status", "type": "update", "data": [entry]}

    assert control(wire, status("online")) == []
    [event] = control(wire, status("maintenance"))
    assert isinstance(event, VenueError)
    assert "maintenance" in event.message


# --- malformed --------------------------------------------------------------------------------

VALID_UPDATE = [("0.05390", "2.00000000")]

MALFORMED_UPDATES = {
    "not json": '{"channel":"book","type":"update","data":[',
    "not an object": "[1, 2]",
    "NaN literal": book_message("update", [("0.05390", "NaN")], [], 1),
    "price as a string": book_message("update", [('"0.05390"', "1.0")], [], 1),
    "negative price": book_message("update", [("-0.05390", "1.0")], [], 1),
    "negative qty": book_message("update", [("0.05390", "-1.0")], [], 1),
    "infinite qty": book_message("update", [("0.05390", "1e999")], [], 1),
    "level not an object": book_message("update", [], [], 1).replace('"bids":[]', '"bids":[[1,2]]'),
    "missing asks": book_message("update", [], [], 1).replace(',"asks":[]', ""),
    "unknown pair": book_message("update", VALID_UPDATE, [], 1, pair="LTC/BTC"),
    "checksum as a string": book_message("update", VALID_UPDATE, [], '"1"'),
    "negative checksum": book_message("update", VALID_UPDATE, [], -1),
    "checksum beyond 32 bits": book_message("update", VALID_UPDATE, [], 2**32),
    "unknown type": book_message("delta", VALID_UPDATE, [], 1),
    "empty data": '{"channel":"book","type":"update","data":[]}',
    "unknown channel": '{"channel":"ticker","type":"update","data":[]}',
    "no channel or method": '{"hello":"kraken"}',
    "success not a boolean": '{"method":"subscribe","success":"yes"}',
    "invalid utf-8": "\udcff",
}


@pytest.mark.parametrize("name", MALFORMED_UPDATES)
def test_malformed_messages_leave_the_book_untouched(wire: Wire, name: str) -> None:
    session = Session(wire)
    session.send("snapshot", bid_side(), ask_side())
    text = MALFORMED_UPDATES[name]
    message: str | bytes = text.encode(errors="surrogateescape") if wire.as_bytes else text
    with pytest.raises(MalformedMessageError):
        session.adapter.handle_message(message, RECV_NS)
    # The book is as it was: the next valid update checks out against the reference.
    assert session.send("update", VALID_UPDATE, []) == session.expected()


@pytest.mark.parametrize(
    ("name", "bids", "asks"),
    [
        ("one-sided", bid_side(), []),
        ("empty", [], []),
        ("unsorted bids", list(reversed(bid_side())), ask_side()),
        ("zero qty", [("0.05390", "0")], ask_side()),
    ],
)
def test_a_broken_snapshot_is_malformed(
    wire: Wire, name: str, bids: TextSide, asks: TextSide
) -> None:
    kraken = KrakenAdapter(("ETHBTC",), 10)
    with pytest.raises(MalformedMessageError):
        kraken.handle_message(wire.text(book_message("snapshot", bids, asks, 0)), RECV_NS)


def test_a_crossed_snapshot_is_counted_as_crossed(wire: Wire) -> None:
    kraken = KrakenAdapter(("ETHBTC",), 10)
    message = book_message("snapshot", [("0.05500", "1.0")], [("0.05400", "1.0")], 0)
    with pytest.raises(CrossedBookError):
        kraken.handle_message(wire.text(message), RECV_NS)
