"""The per-venue delta book: every sequence of snapshots, changes and truncations leaves it
holding exactly what a plain dict of price -> amount would, read best first."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aggtrio.book import BookSide, DeltaBook

# A few distinct prices so changes often hit existing levels, cached tops and deletions.
PRICES = st.sampled_from([round(0.0500 + i * 0.0001, 4) for i in range(30)])
AMOUNTS = st.sampled_from([0.0, 0.5, 1.0, 2.25, 7.0])

OPERATIONS = st.one_of(
    st.tuples(st.just("set"), PRICES, AMOUNTS),
    st.tuples(st.just("replace"), st.lists(st.tuples(PRICES, AMOUNTS), max_size=20)),
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=12)),
    st.tuples(st.just("top"), st.integers(min_value=1, max_value=12)),
    st.tuples(st.just("clear")),
)


def _model_top(
    model: dict[float, float], descending: bool, depth: int
) -> tuple[tuple[float, float], ...]:
    return tuple(sorted(model.items(), reverse=descending)[:depth])


@settings(max_examples=500)
@given(descending=st.booleans(), operations=st.lists(OPERATIONS, max_size=60))
def test_side_matches_a_plain_dict_model(
    descending: bool, operations: list[tuple[Any, ...]]
) -> None:
    side = BookSide(descending=descending)
    model: dict[float, float] = {}
    for operation in operations:
        match operation:
            case ("set", price, amount):
                side.set(price, amount)
                if amount:
                    model[price] = amount
                else:
                    model.pop(price, None)
            case ("replace", levels):
                side.replace(levels)
                model = {price: amount for price, amount in levels if amount}
            case ("truncate", depth):
                side.truncate(depth)
                model = dict(_model_top(model, descending, depth))
            case ("top", depth):
                # Reading the top caches it: later changes must invalidate it correctly.
                assert side.top(depth) == _model_top(model, descending, depth)
            case ("clear",):
                side.clear()
                model = {}
        assert len(side) == len(model)
    for depth in (1, 5, 10, 100):
        assert side.top(depth) == _model_top(model, descending, depth)
    assert side.prices() == [price for price, _ in _model_top(model, descending, len(model))]


def test_bids_best_first_is_highest_and_asks_lowest() -> None:
    book = DeltaBook()
    book.replace([(1.0, 1.0), (3.0, 1.0), (2.0, 1.0)], [(5.0, 1.0), (4.0, 2.0), (6.0, 1.0)])
    bids, asks = book.top(2)
    assert bids == ((3.0, 1.0), (2.0, 1.0))
    assert asks == ((4.0, 2.0), (5.0, 1.0))


def test_change_below_the_cached_top_keeps_it_and_one_within_replaces_it() -> None:
    side = BookSide(descending=False)
    side.replace([(float(p), 1.0) for p in range(1, 21)])
    first = side.top(10)
    side.set(15.0, 9.0)  # below the top 10
    assert side.top(10) is first
    side.set(3.0, 0.0)  # deletes a level inside the top 10: the 11th moves up
    assert side.top(10) == tuple((float(p), 1.0) for p in [1, 2, *range(4, 12)])


def test_deleting_an_absent_level_changes_nothing() -> None:
    side = BookSide(descending=True)
    side.replace([(2.0, 1.0)])
    side.set(3.0, 0.0)
    assert side.top(10) == ((2.0, 1.0),)


def test_truncating_below_a_cached_top_drops_the_cut_levels_from_it() -> None:
    side = BookSide(descending=True)
    side.replace([(float(p), 1.0) for p in range(1, 11)])
    assert len(side.top(5)) == 5
    side.truncate(3)
    assert side.top(5) == ((10.0, 1.0), (9.0, 1.0), (8.0, 1.0))
