"""The fast ingest path must not change a single byte a subscriber receives.

The pipeline caches converted numbers (LevelParser), reuses unchanged sides (BookTops),
merges with stable sorts and assembles each Summary from cached per-level encodings
(SummaryEncoder). These tests compare its output with the plain way of doing each step.
"""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.aggregator import LEVEL_CACHE_LIMIT, SummaryEncoder
from aggtrio.bench.ingest import DEPTH, SYMBOLS, Pipeline, record_messages
from aggtrio.merge import MergedLevel
from aggtrio.model import VenueBook

from .test_merge import reference

VENUES = ("binance", "bitstamp", "kraken")
levels = st.tuples(
    st.sampled_from(VENUES),
    st.floats(min_value=1e-9, max_value=1e9, allow_nan=False),
    st.floats(min_value=1e-9, max_value=1e6, allow_nan=False),
)
sides = st.lists(levels, max_size=10).map(tuple)


def plain_encoding(
    bids: tuple[MergedLevel, ...],
    asks: tuple[MergedLevel, ...],
    spread: float,
    arrival: int,
    live: tuple[str, ...],
) -> bytes:
    summary = Summary(spread=spread, arrival_time=arrival, live_exchanges=live)
    for exchange, price, amount in bids:
        summary.bids.add(exchange=exchange, price=price, amount=amount)
    for exchange, price, amount in asks:
        summary.asks.add(exchange=exchange, price=price, amount=amount)
    encoded: bytes = summary.SerializeToString()
    return encoded


@settings(max_examples=300, deadline=None)
@given(
    summaries=st.lists(
        st.tuples(
            sides,
            sides,
            st.one_of(st.floats(allow_nan=True), st.just(0.0), st.just(-0.0)),
            st.integers(min_value=0, max_value=2**64 - 1),
            st.lists(st.sampled_from(VENUES), unique=True).map(lambda v: tuple(sorted(v))),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_encoder_gives_protobufs_own_bytes(summaries: list[tuple]) -> None:  # type: ignore[type-arg]
    # One encoder across the whole list, so later summaries hit levels cached by earlier ones.
    encoder = SummaryEncoder()
    for bids, asks, spread, arrival, live in summaries:
        assert encoder.encode(bids, asks, spread, arrival, live) == plain_encoding(
            bids, asks, spread, arrival, live
        )


def test_encoder_stays_right_after_its_caches_are_cleared() -> None:
    encoder = SummaryEncoder()
    for i in range(LEVEL_CACHE_LIMIT + 50):
        level = ("binance", 1.0 + i, 2.0)
        bids = (level, ("bitstamp", 0.5, 1.0))
        assert encoder.encode(bids, (), 0.25, i, ("binance",)) == plain_encoding(
            bids, (), 0.25, i, ("binance",)
        )


@pytest.fixture(scope="module")
def recording() -> list[tuple[str, str]]:
    return record_messages(15.0)


def _plain_side(raw: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(price), float(amount)) for price, amount in raw[:DEPTH]]


async def test_every_published_summary_is_the_plain_merge_of_the_venue_messages(
    recording: list[tuple[str, str]],
) -> None:
    """Replays real-format messages of both venues; after each one, the bytes published for
    its symbol decode to the naive merge of each venue's last message, parsed plainly."""
    pipeline = Pipeline(("binance", "bitstamp"))
    books: dict[str, dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]]] = {
        symbol: {} for symbol in SYMBOLS
    }
    symbol_of = {f"{s.lower()}@depth20@100ms": s for s in SYMBOLS}
    symbol_of.update({f"order_book_{s.lower()}": s for s in SYMBOLS})
    checked = 0
    for recv_ns, (venue, message) in enumerate(recording, start=1):
        envelope = orjson.loads(message)
        symbol = symbol_of[envelope.get("stream") or envelope["channel"]]
        data = envelope["data"]
        books[symbol][venue] = (_plain_side(data["bids"]), _plain_side(data["asks"]))
        pipeline.feed([(venue, message)], clock=lambda recv_ns=recv_ns: recv_ns)

        latest = pipeline.broadcasts[symbol].latest
        assert latest is not None
        decoded = Summary.FromString(latest.SerializeToString())
        expected_bids, expected_asks = reference(
            [_venue_book(name, symbol, *sides) for name, sides in books[symbol].items()], DEPTH
        )
        assert [(lv.exchange, lv.price, lv.amount) for lv in decoded.bids] == expected_bids
        assert [(lv.exchange, lv.price, lv.amount) for lv in decoded.asks] == expected_asks
        assert decoded.spread == expected_asks[0][1] - expected_bids[0][1]
        assert list(decoded.live_exchanges) == sorted(books[symbol])
        # Published by this very message, or by an earlier one when its top was unchanged.
        assert decoded.arrival_time <= recv_ns
        checked += decoded.arrival_time == recv_ns
    assert checked > len(recording) // 2
    assert not math.isnan(decoded.spread)


def _venue_book(
    venue: str,
    symbol: str,
    bids: list[tuple[float, float]],
    asks: list[tuple[float, float]],
) -> VenueBook:
    return VenueBook(venue, symbol, tuple(bids), tuple(asks), 0)
