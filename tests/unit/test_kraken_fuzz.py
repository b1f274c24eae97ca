"""Whatever arrives, the Kraken adapter returns events or raises MalformedMessageError.

Arbitrary bytes, text and JSON are fuzzed for every venue in test_adapter_fuzz.py; here is
what a delta venue adds: a sequence of messages on one connection (snapshots, updates,
control messages, junk) must never raise anything else, and every book it publishes must be
one the merge can trust.
"""

from __future__ import annotations

import itertools
import math
import zlib
from typing import Any

import orjson
from hypothesis import find, given, settings
from hypothesis import strategies as st

from aggtrio.model import VenueBook
from aggtrio.venues.base import (
    MalformedMessageError,
    ReconnectRequested,
    Resync,
    Subscribed,
    VenueError,
)
from aggtrio.venues.kraken import KrakenAdapter

from .test_adapter_fuzz import FUZZ, json_values

EVENT_TYPES = (VenueBook, ReconnectRequested, Subscribed, VenueError, Resync)
SYMBOLS = ("ETHBTC", "BTCUSDT")
PAIRS = ("ETH/BTC", "BTC/USDT")


def check(adapter: KrakenAdapter, message: str | bytes) -> list[Any]:
    try:
        events = adapter.handle_message(message, 1)
    except MalformedMessageError:
        return []
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, EVENT_TYPES)
        if isinstance(event, Subscribed | Resync):
            assert event.symbol in adapter.symbols
        if isinstance(event, VenueBook):
            check_book(adapter, event)
    return events


def check_book(adapter: KrakenAdapter, book: VenueBook) -> None:
    assert book.venue == "kraken"
    assert book.symbol in adapter.symbols
    assert book.bids
    assert book.asks
    for side in (book.bids, book.asks):
        assert len(side) <= adapter.depth
        for price, amount in side:
            assert type(price) is float
            assert type(amount) is float
            assert 0 < price < math.inf
            assert 0 < amount < math.inf
    assert all(a[0] > b[0] for a, b in itertools.pairwise(book.bids))
    assert all(a[0] < b[0] for a, b in itertools.pairwise(book.asks))
    assert book.bids[0][0] < book.asks[0][0]


# --- strategies -------------------------------------------------------------------------------

number_text = st.one_of(
    st.floats(min_value=0.0001, max_value=2.0).map(lambda x: f"{x:.5f}"),
    st.floats(min_value=0.0, max_value=100.0).map(lambda x: f"{x:.8f}"),
    st.sampled_from(["0", "-1", "1e999", "NaN", "1E-3", '"0.05"', "null", "true", "[]"]),
)
level_text = st.one_of(
    st.tuples(number_text, number_text).map(lambda pq: f'{{"price":{pq[0]},"qty":{pq[1]}}}'),
    json_values.map(lambda v: orjson.dumps(v).decode()),
)


def side_text(levels: list[tuple[str, str]]) -> str:
    return "[" + ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels) + "]"


def crc(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    def digits(text: str) -> str:
        return text.replace(".", "").lstrip("0")

    return zlib.crc32("".join(digits(p) + digits(q) for p, q in asks[:10] + bids[:10]).encode())


@st.composite
def good_snapshot(draw: st.DrawFn) -> str:
    """A well-formed snapshot with the right checksum (a real book to start from)."""
    prices = draw(st.lists(st.integers(1, 99_999), min_size=2, max_size=24, unique=True))
    prices.sort()
    cut = draw(st.integers(1, len(prices) - 1))
    qty = st.integers(1, 10**9).map(lambda n: f"{n / 1e8:.8f}")
    bids = [(f"{p / 1e5:.5f}", draw(qty)) for p in reversed(prices[:cut])]
    asks = [(f"{p / 1e5:.5f}", draw(qty)) for p in prices[cut:]]
    pair = draw(st.sampled_from(PAIRS))
    return book_text("snapshot", pair, side_text(bids), side_text(asks), str(crc(bids, asks)))


@st.composite
def plausible_update(draw: st.DrawFn) -> str:
    """A well-formed update: its checksum is right only by chance, so it mostly breaks."""
    level = st.tuples(
        st.integers(1, 99_999).map(lambda p: f"{p / 1e5:.5f}"),
        st.integers(0, 10**9).map(lambda n: f"{n / 1e8:.8f}"),
    )
    bids, asks = (side_text(draw(st.lists(level, max_size=4))) for _ in "ba")
    checksum = str(draw(st.integers(0, 2**32 - 1)))
    return book_text("update", draw(st.sampled_from(PAIRS)), bids, asks, checksum)


def book_text(kind: str, pair: str, bids: str, asks: str, checksum: str) -> str:
    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{pair}","bids":{bids},'
        f'"asks":{asks},"checksum":{checksum},"timestamp":"2026-11-30T06:50:10Z"}}]}}'
    )


@st.composite
def any_book(draw: st.DrawFn) -> str:
    """A book message of either type with arbitrary levels and checksum."""
    bids, asks = ("[" + ",".join(draw(st.lists(level_text, max_size=6))) + "]" for _ in "ba")
    return book_text(
        draw(st.sampled_from(["snapshot", "update", "update", "delta"])),
        draw(st.sampled_from([*PAIRS, "LTC/BTC", "ETHBTC"])),
        bids,
        asks,
        draw(st.one_of(st.integers(0, 2**32 - 1).map(str), number_text)),
    )


control_messages = st.one_of(
    st.just('{"channel":"heartbeat"}'),
    st.just('{"method":"pong","req_id":1}'),
    st.sampled_from(PAIRS).map(
        lambda pair: orjson.dumps(
            {
                "method": "subscribe",
                "result": {"channel": "book", "symbol": pair, "depth": 10},
                "success": True,
            }
        ).decode()
    ),
    st.fixed_dictionaries(
        {
            "method": st.sampled_from(["subscribe", "unsubscribe", "ping"]),
            "success": json_values,
            "result": json_values,
            "error": json_values,
        }
    ).map(lambda v: orjson.dumps(v).decode()),
    st.fixed_dictionaries(
        {"channel": st.sampled_from(["status", "book", "heartbeat"]), "data": json_values}
    ).map(lambda v: orjson.dumps(v).decode()),
)
messages = st.one_of(good_snapshot(), plausible_update(), any_book(), control_messages)


# --- properties -------------------------------------------------------------------------------


@FUZZ
@given(sequence=st.lists(messages, min_size=1, max_size=12), depth=st.integers(1, 12))
def test_message_sequences_on_one_connection(sequence: list[str], depth: int) -> None:
    adapter = KrakenAdapter(SYMBOLS, depth)
    for message in sequence:
        check(adapter, message)


def test_the_strategy_reaches_books_and_resyncs() -> None:
    """Guard against a fuzz that only ever exercises the rejection paths."""

    def events_of(sequence: list[str]) -> set[type]:
        adapter = KrakenAdapter(SYMBOLS, 10)
        return {type(event) for message in sequence for event in check(adapter, message)}

    fuzz = settings(max_examples=2000, database=None)
    find(st.lists(messages, max_size=6), lambda s: VenueBook in events_of(s), settings=fuzz)
    find(st.lists(messages, max_size=6), lambda s: Resync in events_of(s), settings=fuzz)
