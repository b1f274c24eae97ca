"""Merging venue books into one ranked top-N view (pure functions, no I/O).

Ordering contract (README "Semantics"): bids by price descending, asks by price ascending;
at equal price the larger amount first, then the exchange name. Levels of different venues
at the same price stay separate levels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from aggtrio.model import VenueBook

# One merged level: (exchange, price, amount).
MergedLevel = tuple[str, float, float]
MergedSide = tuple[MergedLevel, ...]


def _bid_rank(level: MergedLevel) -> tuple[float, float, str]:
    return (-level[1], -level[2], level[0])


def _ask_rank(level: MergedLevel) -> tuple[float, float, str]:
    return (level[1], -level[2], level[0])


def merge_books(books: Iterable[VenueBook], depth: int) -> tuple[MergedSide, MergedSide]:
    """Return the merged (bids, asks), each holding exactly min(depth, available) levels."""
    bids: list[MergedLevel] = []
    asks: list[MergedLevel] = []
    for book in books:
        venue = book.venue
        bids.extend((venue, price, amount) for price, amount in book.bids[:depth])
        asks.extend((venue, price, amount) for price, amount in book.asks[:depth])
    bids.sort(key=_bid_rank)
    asks.sort(key=_ask_rank)
    return tuple(bids[:depth]), tuple(asks[:depth])


def spread(bids: MergedSide, asks: MergedSide) -> float:
    """Best ask minus best bid: negative when venues cross, NaN when a side is empty."""
    if not bids or not asks:
        return math.nan
    return asks[0][1] - bids[0][1]
