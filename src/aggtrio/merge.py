"""Merging venue books into one ranked top-N view (pure functions, no I/O).

Ordering contract (README "Semantics"): bids by price descending, asks by price ascending;
at equal price the larger amount first, then the exchange name. Levels of different venues
at the same price stay separate levels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from operator import attrgetter, itemgetter

from aggtrio.model import VenueBook

# One merged level: (exchange, price, amount).
MergedLevel = tuple[str, float, float]
MergedSide = tuple[MergedLevel, ...]
# One venue's top levels, tagged with its name: (bids, asks).
TaggedBook = tuple[list[MergedLevel], list[MergedLevel]]

_PRICE = itemgetter(1)
_AMOUNT = itemgetter(2)
_VENUE = attrgetter("venue")


def tag_levels(book: VenueBook, depth: int) -> TaggedBook:
    """The book's top `depth` levels per side as merged levels carrying its venue's name."""
    venue = book.venue
    return (
        [(venue, price, amount) for price, amount in book.bids[:depth]],
        [(venue, price, amount) for price, amount in book.asks[:depth]],
    )


def merge_tagged(books: Sequence[TaggedBook], depth: int) -> tuple[MergedSide, MergedSide]:
    """Merge tagged books given in exchange-name order (none gives two empty sides).

    Sorting is stable, also with ``reverse=True``, so a sort by the last tie-breaker first
    and then by each earlier key gives the full ordering with C-level keys: the exchange
    name comes from the input order, then amount (descending), then price.
    """
    if len(books) == 1:
        bids, asks = books[0]
        return tuple(bids[:depth]), tuple(asks[:depth])
    all_bids = [level for bids, _ in books for level in bids]
    all_asks = [level for _, asks in books for level in asks]
    all_bids.sort(key=_AMOUNT, reverse=True)
    all_bids.sort(key=_PRICE, reverse=True)
    all_asks.sort(key=_AMOUNT, reverse=True)
    all_asks.sort(key=_PRICE)
    return tuple(all_bids[:depth]), tuple(all_asks[:depth])


def merge_books(books: Iterable[VenueBook], depth: int) -> tuple[MergedSide, MergedSide]:
    """Return the merged (bids, asks), each holding exactly min(depth, available) levels."""
    return merge_tagged([tag_levels(book, depth) for book in sorted(books, key=_VENUE)], depth)


def spread(bids: MergedSide, asks: MergedSide) -> float:
    """Best ask minus best bid: negative when venues cross, NaN when a side is empty."""
    if not bids or not asks:
        return math.nan
    return asks[0][1] - bids[0][1]
