"""A plausible, seedable moving market shared by the simulated venues of one process.

The :class:`Market` holds one reference mid price per symbol, a mean-reverting random walk
in log-price (an Ornstein-Uhlenbeck process, advanced exactly for whatever time elapsed),
so every venue quotes around the same price and their books interleave when merged.
Each venue builds its own :class:`MovingBook` per symbol around that mid, with its own
bias and noise, and moves it incrementally: a step touches a few levels, it does not
re-randomise the book.

Prices and amounts are integers internally (ticks and lots), so books are exactly
tick-aligned and format to decimal strings without float rounding.
"""

from __future__ import annotations

import bisect
import math
import random

import attrs

# Reference mids revert to their starting price with this time constant (seconds) and move
# by this much per sqrt(second) in log terms (~17 % a year: a calm market). Much more, and
# the mid moves several level spacings between two updates of one venue, so the venue that
# updated last crosses the other most of the time. Stationary spread about +-0.05 %.
_REVERSION_SECONDS = 600.0
_VOLATILITY = 3e-5
# Hard bound on the log-distance from the start price, in case of an extreme draw.
_MAX_LOG_DEVIATION = 0.1
# Typical gap between neighbouring levels, relative to the price (about 0.2 bp).
_LEVEL_SPACING = 2e-5


@attrs.frozen(slots=True)
class SymbolSpec:
    """How a symbol trades: its starting price, tick, lot and display precision.

    The tick is ``10 ** -tick_decimals`` and the lot (amount step) ``10 ** -lot_decimals``;
    ``price_decimals`` (>= ``tick_decimals``) is how many decimals a venue that formats by
    the pair's precision prints.
    """

    symbol: str
    start_price: float
    tick_decimals: int
    price_decimals: int
    lot_decimals: int
    typical_qty: float

    @property
    def tick(self) -> float:
        return 10.0**-self.tick_decimals

    @property
    def lot(self) -> float:
        return 10.0**-self.lot_decimals


# Well-known pairs, near their 2025-2026 prices, with ticks like the big venues use.
_KNOWN: dict[str, SymbolSpec] = {
    spec.symbol: spec
    for spec in (
        SymbolSpec("ETHBTC", 0.035, 6, 8, 4, 5.0),
        SymbolSpec("LTCBTC", 0.0011, 6, 8, 3, 50.0),
        SymbolSpec("XRPBTC", 0.000024, 8, 8, 0, 5000.0),
        SymbolSpec("SOLBTC", 0.0017, 7, 8, 3, 20.0),
        SymbolSpec("BTCUSDT", 90000.0, 2, 2, 5, 0.5),
        SymbolSpec("ETHUSDT", 3000.0, 2, 2, 4, 5.0),
        SymbolSpec("SOLUSDT", 150.0, 2, 2, 3, 50.0),
        SymbolSpec("BNBUSDT", 650.0, 2, 2, 3, 10.0),
        SymbolSpec("XRPUSDT", 2.2, 4, 4, 1, 5000.0),
        SymbolSpec("DOGEUSDT", 0.2, 5, 5, 0, 20000.0),
        SymbolSpec("BTCUSDC", 90000.0, 2, 2, 5, 0.5),
        SymbolSpec("ETHUSDC", 3000.0, 2, 2, 4, 5.0),
        SymbolSpec("BTCUSD", 90000.0, 0, 0, 8, 0.5),
        SymbolSpec("ETHUSD", 3000.0, 1, 1, 8, 5.0),
        SymbolSpec("BTCEUR", 83000.0, 0, 0, 8, 0.5),
        SymbolSpec("ETHEUR", 2800.0, 1, 1, 8, 5.0),
        SymbolSpec("BTCGBP", 70000.0, 0, 0, 8, 0.5),
        SymbolSpec("LTCUSD", 100.0, 2, 2, 8, 50.0),
        SymbolSpec("XRPUSD", 2.2, 5, 5, 8, 5000.0),
    )
}


def symbol_spec(symbol: str) -> SymbolSpec:
    """The spec of a canonical symbol: a known pair's, or one derived from the name alone."""
    known = _KNOWN.get(symbol)
    if known is not None:
        return known
    # Seeded by the name only, so every process and every seed agrees on an unknown pair.
    rng = random.Random(f"aggtrio-symbol:{symbol}")
    price = 10.0 ** rng.uniform(-3.0, 4.0)
    # A tick of roughly 1e-5..1e-4 of the price, never coarser than 1.
    tick_decimals = max(0, 4 - math.floor(math.log10(price)))
    typical_qty = 10.0 ** round(2.0 - 0.5 * math.log10(price))
    lot_decimals = min(8, max(0, 3 - math.floor(math.log10(typical_qty))))
    return SymbolSpec(symbol, price, tick_decimals, tick_decimals, lot_decimals, typical_qty)


def format_units(units: int, decimals: int) -> str:
    """``format_units(3512300, 8) == "0.03512300"``: exact fixed-point text of an integer."""
    if units < 0:
        raise ValueError("negative amounts are never quoted")
    if decimals <= 0:
        return str(units)
    text = str(units).rjust(decimals + 1, "0")
    return f"{text[:-decimals]}.{text[-decimals:]}"


def trim_zeros(text: str) -> str:
    """A decimal without trailing zeros, as Kraken, OKX and Bybit print theirs:
    ``"0.03500000"`` -> ``"0.035"``, ``"8477.00"`` -> ``"8477"``."""
    if "." not in text or "e" in text or "E" in text:
        return text
    return text.rstrip("0").rstrip(".")


_BIAS_SPREAD = 0.45  # stationary std of a venue's quoting bias, in level spacings


class _Walk:
    """One symbol's reference mid: an exact OU process in log-price, advanced lazily."""

    __slots__ = ("_last_time", "_log_mean", "_log_price", "_rng")

    def __init__(self, start_price: float, rng: random.Random) -> None:
        self._rng = rng
        self._log_mean = math.log(start_price)
        # Start a little off the nominal price so seeds give visibly different markets.
        self._log_price = self._log_mean + rng.gauss(0.0, 0.001)
        self._last_time: float | None = None

    def price_at(self, now: float) -> float:
        last = self._last_time
        if last is None or now < last - 1.0:
            # First use, or a new clock (another trio run) started from scratch.
            self._last_time = now
        elif now > last:
            dt = now - last
            decay = math.exp(-dt / _REVERSION_SECONDS)
            theta = 1.0 / _REVERSION_SECONDS
            std = _VOLATILITY * math.sqrt((1.0 - decay * decay) / (2.0 * theta))
            deviation = (self._log_price - self._log_mean) * decay + self._rng.gauss(0.0, std)
            deviation = max(-_MAX_LOG_DEVIATION, min(_MAX_LOG_DEVIATION, deviation))
            self._log_price = self._log_mean + deviation
            self._last_time = now
        return math.exp(self._log_price)


class Market:
    """Reference prices for every symbol, shared by all venues simulated in one process.

    Any symbol is accepted. ``seed`` makes every walk (and, through :meth:`venue_rng`, every
    venue book) reproducible for the same sequence of calls; each symbol has its own random
    stream, so stepping one symbol never changes another's path.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        # Without a seed, draw one, so per-symbol streams are still independent and stable.
        self._base_seed = seed if seed is not None else random.SystemRandom().getrandbits(64)
        self._walks: dict[str, _Walk] = {}
        self._specs: dict[str, SymbolSpec] = {}

    def spec(self, symbol: str) -> SymbolSpec:
        spec = self._specs.get(symbol)
        if spec is None:
            spec = self._specs[symbol] = symbol_spec(symbol)
        return spec

    def mid(self, symbol: str, now: float) -> float:
        """The reference mid price of ``symbol`` at time ``now`` (seconds, any monotonic clock).

        Times must not go backwards; a call with an earlier time returns the current price.
        """
        walk = self._walks.get(symbol)
        if walk is None:
            rng = random.Random(f"aggtrio-walk:{self._base_seed}:{symbol}")
            walk = self._walks[symbol] = _Walk(self.spec(symbol).start_price, rng)
        return walk.price_at(now)

    def venue_rng(self, venue: str, seed: int | None, symbol: str) -> random.Random:
        """The random stream for one venue's book of one symbol."""
        base = seed if seed is not None else f"{self._base_seed}:{venue}"
        return random.Random(f"aggtrio-book:{base}:{symbol}")

    def new_book(self, symbol: str, *, rng: random.Random, capacity: int, now: float) -> MovingBook:
        return MovingBook(self, symbol, rng=rng, capacity=capacity, now=now)


class _Side:
    """One side of a book as parallel sorted lists, best level first.

    Keys sort ascending from the best level: the tick itself for asks, minus the tick for
    bids, so both sides share the same code.
    """

    __slots__ = ("keys", "lots", "sign")

    def __init__(self, sign: int) -> None:
        self.sign = sign  # +1 for asks, -1 for bids
        self.keys: list[int] = []
        self.lots: list[int] = []

    def ticks(self, depth: int) -> list[tuple[int, int]]:
        sign = self.sign
        return [
            (sign * key, lots)
            for key, lots in zip(self.keys[:depth], self.lots[:depth], strict=True)
        ]

    def drop_better_than(self, key: int) -> None:
        """Remove every level strictly better than ``key`` (taken out or pulled)."""
        cut = bisect.bisect_left(self.keys, key)
        del self.keys[:cut]
        del self.lots[:cut]

    def insert(self, key: int, lots: int) -> None:
        at = bisect.bisect_left(self.keys, key)
        if at < len(self.keys) and self.keys[at] == key:
            self.lots[at] = lots
        else:
            self.keys.insert(at, key)
            self.lots.insert(at, lots)

    def remove_at(self, index: int) -> None:
        del self.keys[index]
        del self.lots[index]


class MovingBook:
    """One venue's book for one symbol, moved a little at each :meth:`step`.

    Invariants after every step: levels sit on distinct positive ticks, bids strictly
    descending, asks strictly ascending, best bid < best ask, every amount at least one lot,
    and each side holds ``capacity`` levels (fewer only for absurdly coarse ticks).
    """

    def __init__(
        self, market: Market, symbol: str, *, rng: random.Random, capacity: int, now: float
    ) -> None:
        if capacity < 1:
            raise ValueError("a book needs at least one level per side")
        self.market = market
        self.symbol = symbol
        self.spec = market.spec(symbol)
        self.capacity = capacity
        self._rng = rng
        mid = market.mid(symbol, now)
        tick = self.spec.tick
        self._spacing = max(1, round(mid * _LEVEL_SPACING / tick))
        self._typical_lots = max(1.0, self.spec.typical_qty / self.spec.lot)
        # Each venue quotes around its own slightly biased price (in units of level spacing).
        # The bias wanders with a stationary spread of ~0.45 spacing, well inside the
        # venue's half-spread, so two venues cross now and then (a few % of the time), as
        # real venues briefly do, rather than most of the time.
        self._bias = rng.gauss(0.0, _BIAS_SPREAD)
        self.bids = _Side(-1)
        self.asks = _Side(+1)
        self.step(now)

    def levels(self, depth: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The top ``depth`` levels per side as ``(tick, lots)``, best first."""
        return self.bids.ticks(depth), self.asks.ticks(depth)

    def _draw_lots(self) -> int:
        rng = self._rng
        lots = self._typical_lots * rng.lognormvariate(0.0, 1.0)
        if rng.random() < 0.05:
            lots *= 10.0  # the odd large resting order
        return max(1, round(lots))

    def step(self, now: float) -> None:
        """Move the book towards the market at ``now``; touches a few levels only."""
        rng = self._rng
        spacing = self._spacing
        self._bias = 0.9 * self._bias + rng.gauss(0.0, _BIAS_SPREAD * math.sqrt(1 - 0.9**2))
        centre = self.market.mid(self.symbol, now) / self.spec.tick + self._bias * spacing
        half = spacing * rng.uniform(0.3, 1.2)
        best_bid = max(1, math.floor(centre - half))
        best_ask = max(best_bid + 1, math.ceil(centre + half))

        # The market moved through these levels: they are gone.
        self.bids.drop_better_than(-best_bid)
        self.asks.drop_better_than(best_ask)
        # Improve the top to the target most of the time (always if the side is empty).
        for side, key in ((self.bids, -best_bid), (self.asks, best_ask)):
            if not side.keys or (side.keys[0] > key and rng.random() < 0.8):
                side.insert(key, self._draw_lots())

        for _ in range(rng.randint(1, 3)):
            self._tweak(self.bids if rng.random() < 0.5 else self.asks)

        for side in (self.bids, self.asks):
            self._refill(side)

    def _tweak(self, side: _Side) -> None:
        """Change one level, favouring the top of the book where activity is."""
        rng = self._rng
        count = len(side.keys)
        if count == 0:
            return
        index = min(rng.randrange(count), rng.randrange(count))
        action = rng.random()
        if action < 0.6:
            side.lots[index] = max(1, round(side.lots[index] * rng.uniform(0.3, 1.8)))
        elif action < 0.8 and count > 1:
            side.remove_at(index)
        elif index + 1 < count and side.keys[index + 1] - side.keys[index] > 1:
            key = rng.randint(side.keys[index] + 1, side.keys[index + 1] - 1)
            side.insert(key, self._draw_lots())

    def _refill(self, side: _Side) -> None:
        rng = self._rng
        del side.keys[self.capacity :]
        del side.lots[self.capacity :]
        while len(side.keys) < self.capacity:
            key = side.keys[-1] + rng.randint(1, 2 * self._spacing)
            if side.sign < 0 and key >= 0:
                break  # a bid at tick 0 or below: no room left under this price
            side.keys.append(key)
            side.lots.append(self._draw_lots())
