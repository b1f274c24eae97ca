"""What every delta venue relies on: a book per symbol that publishes only a changed top,
and a continuity break that yields exactly one Resync and silence until the next snapshot."""

from __future__ import annotations

import pytest

from aggtrio.model import VenueBook
from aggtrio.venues.base import Resync
from aggtrio.venues.delta import DeltaBooks, NumberMemo

BIDS = [(0.0501, 1.0), (0.0500, 2.0), (0.0499, 3.0)]
ASKS = [(0.0502, 1.5), (0.0503, 2.5), (0.0504, 3.5)]


def synced(depth: int = 2) -> DeltaBooks:
    books = DeltaBooks("okx", depth)
    books.snapshot("ETHBTC", BIDS, ASKS)
    return books


def test_snapshot_publishes_the_top_depth_levels() -> None:
    books = synced()
    assert books.publish("ETHBTC", 7) == [
        VenueBook(
            "okx", "ETHBTC", ((0.0501, 1.0), (0.0500, 2.0)), ((0.0502, 1.5), (0.0503, 2.5)), 7
        )
    ]


def test_a_change_below_the_top_publishes_nothing_and_one_within_publishes() -> None:
    books = synced()
    books.publish("ETHBTC", 1)
    book = books.book("ETHBTC")
    assert book is not None
    book.asks.set(0.0504, 9.0)  # third level: outside the top 2
    assert books.publish("ETHBTC", 2) == []
    book.asks.set(0.0502, 0.0)  # best ask deleted: the next one moves up
    (event,) = books.publish("ETHBTC", 3)
    assert isinstance(event, VenueBook)
    assert event.asks == ((0.0503, 2.5), (0.0504, 9.0))


def test_a_symbol_without_a_snapshot_publishes_nothing() -> None:
    books = DeltaBooks("okx", 10)
    assert not books.synced("ETHBTC")
    assert books.book("ETHBTC") is None
    assert books.publish("ETHBTC", 1) == []


def test_a_break_resyncs_once_then_stays_quiet_until_the_next_snapshot() -> None:
    books = synced()
    assert books.break_("ETHBTC", "seqId gap") == [Resync("ETHBTC", "seqId gap")]
    assert not books.synced("ETHBTC")
    assert books.break_("ETHBTC", "another gap") == []  # already awaiting a snapshot
    assert books.publish("ETHBTC", 2) == []
    books.snapshot("ETHBTC", BIDS, ASKS)
    (event,) = books.publish("ETHBTC", 3)
    assert isinstance(event, VenueBook)  # republished in full after the resync


@pytest.mark.parametrize(
    ("bids", "asks", "reason"),
    [
        ([], ASKS, "lost a side"),
        (BIDS, [], "lost a side"),
        ([(0.0503, 1.0)], ASKS, "crossed"),
    ],
)
def test_a_book_that_lost_a_side_or_crossed_is_a_break_not_a_market(
    bids: list[tuple[float, float]], asks: list[tuple[float, float]], reason: str
) -> None:
    books = DeltaBooks("kraken", 10)
    books.snapshot("ETHBTC", bids, asks)
    (event,) = books.publish("ETHBTC", 1)
    assert isinstance(event, Resync)
    assert reason in event.reason
    assert not books.synced("ETHBTC")


def test_number_memo_converts_each_text_once_and_refuses_what_is_not_a_level_number() -> None:
    numbers = NumberMemo()
    assert numbers.known("0.0501") is None
    assert numbers.number("0.0501") == 0.0501
    assert numbers.known("0.0501") == 0.0501  # remembered: the hot path is one lookup
    assert numbers.number("0") == 0.0  # a zero amount deletes a level
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match="negative or not finite"):
            numbers.number(bad)
    with pytest.raises(ValueError, match="could not convert"):
        numbers.number("abc")
    with pytest.raises(TypeError):
        numbers.number(0.5)  # delta venues send numbers as strings
    with pytest.raises(TypeError):
        numbers.known(["unhashable"])
