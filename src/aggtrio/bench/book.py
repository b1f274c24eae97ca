"""The delta-book section: which side structure to keep a venue's book in.

Each candidate applies the same stream of changes (mostly near the top, as real books
change) to books of several sizes and reads the top 10 after every message, the way an
adapter does. Reported in µs of CPU per message; `aggtrio.book` uses the winner.
"""

from __future__ import annotations

import bisect
import heapq
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from sortedcontainers import SortedDict

from aggtrio.book import BookSide
from aggtrio.model import PriceLevel

SIZES = (10, 50, 400, 5000)
CHANGES_PER_MESSAGE = 3
TOP = 10


class SideUnderTest(Protocol):
    def set(self, price: float, amount: float) -> None: ...
    def top(self, depth: int) -> tuple[PriceLevel, ...]: ...


class SortedDictSide:
    """sortedcontainers' SortedDict, keyed so the best level comes first."""

    def __init__(self, *, descending: bool) -> None:
        self._sign = -1.0 if descending else 1.0
        self._levels: Any = SortedDict()

    def set(self, price: float, amount: float) -> None:
        if amount:
            self._levels[price * self._sign] = amount
        else:
            self._levels.pop(price * self._sign, None)

    def top(self, depth: int) -> tuple[PriceLevel, ...]:
        sign = self._sign
        return tuple((key * sign, amount) for key, amount in self._levels.items()[:depth])


class HeapOnReadSide:
    """A plain dict; the top is found with heapq on every read."""

    def __init__(self, *, descending: bool) -> None:
        self._descending = descending
        self._levels: dict[float, float] = {}

    def set(self, price: float, amount: float) -> None:
        if amount:
            self._levels[price] = amount
        else:
            self._levels.pop(price, None)

    def top(self, depth: int) -> tuple[PriceLevel, ...]:
        pick = heapq.nlargest if self._descending else heapq.nsmallest
        levels = self._levels
        return tuple((price, levels[price]) for price in pick(depth, levels))


class BisectSide:
    """A dict and a bisect-sorted key list without the top cache, to show what it saves."""

    def __init__(self, *, descending: bool) -> None:
        self._sign = -1.0 if descending else 1.0
        self._levels: dict[float, float] = {}
        self._keys: list[float] = []

    def set(self, price: float, amount: float) -> None:
        key = price * self._sign
        if amount:
            if price not in self._levels:
                bisect.insort(self._keys, key)
            self._levels[price] = amount
        elif self._levels.pop(price, None) is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]

    def top(self, depth: int) -> tuple[PriceLevel, ...]:
        sign = self._sign
        return tuple((key * sign, self._levels[key * sign]) for key in self._keys[:depth])


CANDIDATES: dict[str, Callable[..., SideUnderTest]] = {
    "dict + bisect + top cache (aggtrio.book)": BookSide,
    "dict + bisect": BisectSide,
    "sortedcontainers SortedDict": SortedDictSide,
    "dict + heapq on read": HeapOnReadSide,
}


def _workload(size: int, messages: int, rng: random.Random) -> list[list[PriceLevel]]:
    """Ask-side changes for `messages` messages on a book of `size` levels one tick apart.

    The level changed is drawn geometrically from the top (most activity is near the
    touch); a third of the changes delete a level and re-add one elsewhere, so the book
    keeps its size while its keys move.
    """
    tick = 0.01
    live = [100.0 + tick * i for i in range(size)]
    present = set(live)
    stream: list[list[PriceLevel]] = []
    for _ in range(messages):
        changes: list[PriceLevel] = []
        for _ in range(CHANGES_PER_MESSAGE):
            index = min(int(rng.expovariate(0.15)), len(live) - 1)
            price = live[index]
            if rng.random() < 0.33 and len(live) > 1:
                changes.append((price, 0.0))
                present.discard(price)
                live.pop(index)
                new = round(live[0] + tick * rng.randint(-5, size), 2)
                if new > 0 and new not in present:
                    present.add(new)
                    bisect.insort(live, new)
                    changes.append((new, rng.uniform(0.1, 5.0)))
            else:
                changes.append((price, rng.uniform(0.1, 5.0)))
        stream.append(changes)
    return stream


def _initial(size: int) -> list[PriceLevel]:
    return [(100.0 + 0.01 * i, 1.0) for i in range(size)]


def _time(side: SideUnderTest, stream: list[list[PriceLevel]]) -> float:
    top, set_level = side.top, side.set
    started = time.process_time()
    for changes in stream:
        for price, amount in changes:
            set_level(price, amount)
        top(TOP)
    return time.process_time() - started


def run_book_bench(*, quick: bool = False, seed: int = 7) -> dict[str, Any]:
    """µs of CPU per message for each candidate at each book size."""
    messages = 2_000 if quick else 20_000
    results: dict[str, dict[str, float]] = {name: {} for name in CANDIDATES}
    for size in SIZES:
        stream = _workload(size, messages, random.Random(seed))
        for name, make in CANDIDATES.items():
            best = min(_time(_fresh(make, size), stream) for _ in range(3))
            results[name][str(size)] = best / messages * 1e6
    return {"messages": messages, "changes_per_message": CHANGES_PER_MESSAGE, "us": results}


def _fresh(make: Callable[..., SideUnderTest], size: int) -> SideUnderTest:
    side = make(descending=False)
    for price, amount in _initial(size):
        side.set(price, amount)
    return side
