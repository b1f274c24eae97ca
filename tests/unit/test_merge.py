"""The merged-book contract: ordering, ties, depth cap, spread (README "Semantics")."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from aggtrio.merge import MergedLevel, merge_books, spread
from aggtrio.model import VenueBook


def book(venue: str, bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> VenueBook:
    return VenueBook(venue, "ETHBTC", tuple(bids), tuple(asks), 1)


def test_bids_descend_and_asks_ascend_across_venues() -> None:
    bids, asks = merge_books(
        [
            book("binance", [(10.0, 1.0), (8.0, 1.0)], [(11.0, 1.0), (13.0, 1.0)]),
            book("bitstamp", [(9.0, 1.0), (7.0, 1.0)], [(12.0, 1.0), (14.0, 1.0)]),
        ],
        depth=10,
    )
    assert [level[1] for level in bids] == [10.0, 9.0, 8.0, 7.0]
    assert [level[0] for level in bids] == ["binance", "bitstamp", "binance", "bitstamp"]
    assert [level[1] for level in asks] == [11.0, 12.0, 13.0, 14.0]


def test_equal_price_puts_larger_amount_first_then_exchange_name() -> None:
    bids, asks = merge_books(
        [
            book("bitstamp", [(10.0, 2.0)], [(11.0, 1.0)]),
            book("binance", [(10.0, 1.0)], [(11.0, 1.0)]),
            book("aaa", [(10.0, 2.0)], [(11.0, 3.0)]),
        ],
        depth=10,
    )
    # Same price levels from different venues stay separate levels.
    assert bids == (("aaa", 10.0, 2.0), ("bitstamp", 10.0, 2.0), ("binance", 10.0, 1.0))
    assert asks == (("aaa", 11.0, 3.0), ("binance", 11.0, 1.0), ("bitstamp", 11.0, 1.0))


def test_each_side_is_capped_at_depth() -> None:
    ladder = [(100.0 - i, 1.0) for i in range(15)]
    asks = [(200.0 + i, 1.0) for i in range(15)]
    bids, merged_asks = merge_books(
        [book("binance", ladder, asks), book("bitstamp", ladder, asks)], depth=10
    )
    assert len(bids) == 10
    assert len(merged_asks) == 10
    assert bids[0][1] == 100.0
    assert bids[-1][1] == 96.0  # five prices, two venues each


def test_fewer_levels_than_depth_gives_all_of_them() -> None:
    bids, asks = merge_books([book("binance", [(1.0, 1.0)], [])], depth=10)
    assert bids == (("binance", 1.0, 1.0),)
    assert asks == ()


def test_spread_is_best_ask_minus_best_bid() -> None:
    bids, asks = merge_books([book("binance", [(10.0, 1.0)], [(10.5, 1.0)])], depth=10)
    assert spread(bids, asks) == 0.5


def test_spread_is_negative_when_venues_cross() -> None:
    bids, asks = merge_books(
        [
            book("binance", [(10.0, 1.0)], [(10.5, 1.0)]),
            book("bitstamp", [(10.7, 1.0)], [(11.0, 1.0)]),
        ],
        depth=10,
    )
    assert math.isclose(spread(bids, asks), 10.5 - 10.7)
    assert spread(bids, asks) < 0


def test_spread_is_nan_when_a_side_is_empty() -> None:
    assert math.isnan(spread(*merge_books([book("binance", [(1.0, 1.0)], [])], depth=10)))
    assert math.isnan(spread(*merge_books([book("binance", [], [(1.0, 1.0)])], depth=10)))
    assert math.isnan(spread(*merge_books([], depth=10)))


# --- property: the merge equals a naive sort-and-take reference ---------------------------

VENUES = ["binance", "bitstamp", "kraken", "okx"]
prices = st.sampled_from([round(0.01 * i, 2) for i in range(1, 40)])  # few values: many ties
amounts = st.sampled_from([0.5, 1.0, 2.0, 3.25])


@st.composite
def venue_books(draw: st.DrawFn) -> list[VenueBook]:
    books = []
    for venue in draw(st.lists(st.sampled_from(VENUES), unique=True, max_size=4)):
        bid_prices = sorted(draw(st.sets(prices, max_size=15)), reverse=True)
        ask_prices = sorted(draw(st.sets(prices, max_size=15)))
        books.append(
            VenueBook(
                venue,
                "ETHBTC",
                tuple((p, draw(amounts)) for p in bid_prices),
                tuple((p, draw(amounts)) for p in ask_prices),
                0,
            )
        )
    return books


def reference(books: list[VenueBook], depth: int) -> tuple[list[MergedLevel], list[MergedLevel]]:
    """The contract spelled out naively: every level, one sort, take the top `depth`."""
    all_bids = [(b.venue, p, a) for b in books for p, a in b.bids]
    all_asks = [(b.venue, p, a) for b in books for p, a in b.asks]
    all_bids.sort(key=lambda lvl: lvl[0])
    all_bids.sort(key=lambda lvl: lvl[2], reverse=True)
    all_bids.sort(key=lambda lvl: lvl[1], reverse=True)
    all_asks.sort(key=lambda lvl: lvl[0])
    all_asks.sort(key=lambda lvl: lvl[2], reverse=True)
    all_asks.sort(key=lambda lvl: lvl[1])
    return all_bids[:depth], all_asks[:depth]


@settings(max_examples=400, deadline=None)
@given(books=venue_books(), depth=st.integers(min_value=1, max_value=12))
def test_merge_equals_naive_sort_and_take(books: list[VenueBook], depth: int) -> None:
    bids, asks = merge_books(books, depth)
    expected_bids, expected_asks = reference(books, depth)
    assert list(bids) == expected_bids
    assert list(asks) == expected_asks
    assert len(bids) == min(depth, sum(len(b.bids) for b in books))
    assert len(asks) == min(depth, sum(len(b.asks) for b in books))
