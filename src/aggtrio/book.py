"""One venue's order book for one symbol, kept from a snapshot and the deltas that follow.

Kraken, Coinbase, OKX and Bybit send a snapshot, then changed levels ("price P now has
amount A"; amount 0 deletes). The adapter applies them here and reads the top `depth` levels
after every message. Each side is a dict (price -> amount) plus a sorted list of its keys
kept with `bisect`: `aggtrio bench --only book` measured it against sortedcontainers'
SortedDict and a heap-on-read dict over books of 10 to 5,000 levels, and it was the fastest
at every size (README, Performance). Inserting into a 5,000-entry list moves ~40 KB, which
is still cheaper than a balanced tree's Python-level bookkeeping.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from aggtrio.model import PriceLevel

Side = tuple[PriceLevel, ...]


class BookSide:
    """The levels of one side, best first: bids by descending, asks by ascending price.

    Keys in the sorted list are negated for bids, so both sides sort ascending and the
    best level is always at index 0.
    """

    __slots__ = ("_amounts", "_keys", "_sign", "_top", "_top_depth")

    def __init__(self, *, descending: bool) -> None:
        self._sign = -1.0 if descending else 1.0
        self._amounts: dict[float, float] = {}
        self._keys: list[float] = []
        # The last top() result, reused while no change reaches it.
        self._top: Side | None = None
        self._top_depth = 0

    def __len__(self) -> int:
        return len(self._amounts)

    def set(self, price: float, amount: float) -> None:
        """Make `price` hold `amount`; an amount of 0 removes the level (absent: no-op)."""
        amounts = self._amounts
        key = price * self._sign
        if amount:
            if price not in amounts:
                bisect.insort(self._keys, key)
            amounts[price] = amount
        elif price in amounts:
            del amounts[price]
            index = bisect.bisect_left(self._keys, key)
            del self._keys[index]
        else:
            return
        top = self._top
        if top is not None and (len(top) < self._top_depth or key <= top[-1][0] * self._sign):
            self._top = None  # the change lies within (or could extend) the cached top

    def replace(self, levels: Iterable[PriceLevel]) -> None:
        """Drop every level and take `levels` (a snapshot); zero amounts are skipped."""
        sign = self._sign
        self._amounts = {price: amount for price, amount in levels if amount}
        self._keys = sorted(price * sign for price in self._amounts)
        self._top = None

    def clear(self) -> None:
        self.replace(())

    def truncate(self, depth: int) -> None:
        """Keep only the best `depth` levels (Kraken: the book is as deep as subscribed)."""
        keys = self._keys
        if len(keys) > depth:
            sign = self._sign
            for key in keys[depth:]:
                del self._amounts[key * sign]
            del keys[depth:]
            if depth < self._top_depth:
                self._top = None

    def top(self, depth: int) -> Side:
        """The best `depth` levels as (price, amount), best first."""
        top = self._top
        if top is None or self._top_depth != depth:
            sign, amounts = self._sign, self._amounts
            top = tuple([(key * sign, amounts[key * sign]) for key in self._keys[:depth]])
            self._top, self._top_depth = top, depth
        return top

    def prices(self) -> list[float]:
        """Every price on this side, best first."""
        sign = self._sign
        return [key * sign for key in self._keys]


class DeltaBook:
    """Both sides of one venue's book for one symbol."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids = BookSide(descending=True)
        self.asks = BookSide(descending=False)

    def replace(self, bids: Iterable[PriceLevel], asks: Iterable[PriceLevel]) -> None:
        self.bids.replace(bids)
        self.asks.replace(asks)

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()

    def apply(self, bids: Iterable[PriceLevel], asks: Iterable[PriceLevel]) -> None:
        """Apply one message's level changes, in order (an amount of 0 deletes)."""
        set_bid, set_ask = self.bids.set, self.asks.set
        for price, amount in bids:
            set_bid(price, amount)
        for price, amount in asks:
            set_ask(price, amount)

    def truncate(self, depth: int) -> None:
        """Keep only the best `depth` levels of each side."""
        self.bids.truncate(depth)
        self.asks.truncate(depth)

    def top(self, depth: int) -> tuple[Side, Side]:
        return self.bids.top(depth), self.asks.top(depth)
