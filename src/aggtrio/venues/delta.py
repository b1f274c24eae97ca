"""What the adapters of snapshot-then-delta venues share: a book per symbol, and the rule
that a book whose continuity broke is dropped until a new snapshot arrives.

A venue adapter (Kraken, Coinbase, OKX, Bybit) parses and validates its own messages; it
hands snapshots and level changes to :class:`DeltaBooks`, which keeps each symbol's
:class:`~aggtrio.book.DeltaBook`, turns a changed top into a
:class:`~aggtrio.model.VenueBook`, and turns a break into exactly one
:class:`~aggtrio.venues.base.Resync` (later deltas are ignored until the next snapshot).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aggtrio.book import DeltaBook
from aggtrio.model import PriceLevel, VenueBook
from aggtrio.venues.base import AdapterEvent, CrossedBookError, MalformedMessageError, Resync, Side


def check_snapshot(bids: Sequence[tuple[Any, ...]], asks: Sequence[tuple[Any, ...]]) -> None:
    """A snapshot replaces the book, so it must be one the merge can trust: both sides, no
    level with amount 0, prices strictly best-first, not crossed. Levels are (price,
    amount, …) tuples."""
    if not bids or not asks:
        raise MalformedMessageError("snapshot has no bids or no asks")
    if any(level[1] == 0.0 for level in itertools.chain(bids, asks)):
        raise MalformedMessageError("snapshot has a level with amount 0")
    if not all(a[0] > b[0] for a, b in itertools.pairwise(bids)):
        raise MalformedMessageError("snapshot bids are not strictly best-first")
    if not all(a[0] < b[0] for a, b in itertools.pairwise(asks)):
        raise MalformedMessageError("snapshot asks are not strictly best-first")
    if bids[0][0] >= asks[0][0]:
        raise CrossedBookError(
            f"snapshot is crossed: best bid {bids[0][0]!r} >= best ask {asks[0][0]!r}"
        )


# Number texts a NumberMemo remembers before it starts afresh (as LEVEL_MEMO_LIMIT).
NUMBER_MEMO_LIMIT = 50_000


class NumberMemo:
    """Floats (finite, >= 0) from the number texts of delta levels, each text converted once.

    ``float()`` is the main cost of a level, and consecutive messages repeat most prices
    and amounts. The hot path is ``known(text)`` (None for a text not seen yet, TypeError
    for an unhashable one), then ``number(text)``, which converts, checks and remembers it
    (TypeError / ValueError if it is not such a number); callers say what was wrong.
    """

    __slots__ = ("_memo", "known")

    def __init__(self) -> None:
        self._memo: dict[str, float] = {}
        self.known: Callable[[Any], float | None] = self._memo.get

    def number(self, text: object) -> float:
        if type(text) is not str:
            raise TypeError("not a string")
        value = float(text)
        if not 0.0 <= value < math.inf:
            raise ValueError("negative or not finite")
        memo = self._memo
        if len(memo) >= NUMBER_MEMO_LIMIT:
            memo.clear()  # in place: bound `known`s stay valid
        memo[text] = value
        return value


class DeltaBooks:
    """The books of one connection's symbols, each synced (from a snapshot) or not."""

    __slots__ = ("_books", "_published", "depth", "venue")

    def __init__(self, venue: str, depth: int) -> None:
        self.venue = venue
        self.depth = depth
        # Only synced symbols have a book; a symbol awaiting its snapshot has none.
        self._books: dict[str, DeltaBook] = {}
        # The (bids, asks) last published per symbol, to publish only changes.
        self._published: dict[str, tuple[Side, Side]] = {}

    def synced(self, symbol: str) -> bool:
        return symbol in self._books

    def book(self, symbol: str) -> DeltaBook | None:
        """The symbol's book if it is synced; None while it awaits a snapshot."""
        return self._books.get(symbol)

    def snapshot(
        self, symbol: str, bids: Iterable[PriceLevel], asks: Iterable[PriceLevel]
    ) -> DeltaBook:
        """Start `symbol` afresh from a snapshot; apply deltas to the returned book."""
        book = self._books.get(symbol) or DeltaBook()
        book.replace(bids, asks)
        self._books[symbol] = book
        self._published.pop(symbol, None)
        return book

    def publish(self, symbol: str, recv_ns: int) -> list[AdapterEvent]:
        """The symbol's top after a message: a VenueBook if it changed, nothing if not.

        A book that has lost a side or crossed itself was built from a broken stream (a
        venue's own book never crosses), so that is a break, not a market to merge.
        """
        book = self._books.get(symbol)
        if book is None:
            return []
        bids, asks = book.top(self.depth)
        last = self._published.get(symbol)
        if last is not None and last[0] == bids and last[1] == asks:
            return []  # the change lay below the top `depth`
        if not bids or not asks:
            return self.break_(symbol, "the book lost a side")
        if bids[0][0] >= asks[0][0]:
            return self.break_(
                symbol, f"the book crossed: best bid {bids[0][0]!r} >= best ask {asks[0][0]!r}"
            )
        self._published[symbol] = (bids, asks)
        return [VenueBook(self.venue, symbol, bids, asks, recv_ns)]

    def break_(self, symbol: str, reason: str) -> list[AdapterEvent]:
        """Continuity broke: forget the book; one Resync if it was synced, else nothing
        (it is already awaiting a snapshot)."""
        self._published.pop(symbol, None)
        if self._books.pop(symbol, None) is None:
            return []
        return [Resync(symbol, reason)]
