"""The simulated market: specs, reference walk, and the invariants of each venue's book."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggtrio.simulator.market import Market, MovingBook, format_units, symbol_spec


def check_invariants(book: MovingBook) -> None:
    bids, asks = book.levels(book.capacity)
    assert len(bids) == book.capacity
    assert len(asks) == book.capacity
    bid_ticks = [tick for tick, _ in bids]
    ask_ticks = [tick for tick, _ in asks]
    assert all(a > b for a, b in itertools.pairwise(bid_ticks)), "bids descend"
    assert all(a < b for a, b in itertools.pairwise(ask_ticks)), "asks ascend"
    assert 0 < bid_ticks[0] < ask_ticks[0], "best bid below best ask"
    assert all(lots >= 1 for _, lots in bids + asks)


def test_known_specs_fit_their_price() -> None:
    ethbtc = symbol_spec("ETHBTC")
    assert ethbtc.tick == pytest.approx(1e-6)
    assert ethbtc.price_decimals == 8
    assert 0.02 < ethbtc.start_price < 0.06
    btcusdt = symbol_spec("BTCUSDT")
    assert btcusdt.tick == pytest.approx(0.01)
    assert 50_000 < btcusdt.start_price < 150_000
    assert 1000 < symbol_spec("ETHUSDT").start_price < 6000
    assert symbol_spec("BTCUSD").start_price > 10_000


@pytest.mark.parametrize("symbol", ["FOOBAR", "XYZ", "ABCDEF123"])
def test_unknown_symbols_get_a_stable_plausible_spec(symbol: str) -> None:
    spec = symbol_spec(symbol)
    assert spec == symbol_spec(symbol), "derived from the name alone"
    assert 1e-3 <= spec.start_price <= 1e4
    # A tick between 1e-6 and 1e-3 of the price (or 1 for large prices).
    assert spec.tick <= spec.start_price * 1e-3
    assert spec.tick >= spec.start_price * 1e-6 or spec.tick == 1.0
    assert spec.price_decimals >= spec.tick_decimals
    assert spec.typical_qty >= spec.lot
    assert symbol_spec("FOOBAR") != symbol_spec("FOOBAZ")


def test_format_units_is_exact_fixed_point() -> None:
    assert format_units(3512300, 8) == "0.03512300"
    assert format_units(1, 8) == "0.00000001"
    assert format_units(9000001, 2) == "90000.01"
    assert format_units(90000, 0) == "90000"
    assert format_units(0, 3) == "0.000"
    with pytest.raises(ValueError, match="negative"):
        format_units(-1, 2)


def test_reference_mid_is_deterministic_with_a_seed() -> None:
    times = [0.0, 0.1, 0.5, 3.0, 60.0]

    def path(seed: int) -> list[float]:
        market = Market(seed=seed)
        return [market.mid("ETHBTC", t) for t in times]

    assert path(42) == path(42)
    assert path(42) != path(43)
    assert len(set(path(42))) == len(times)


def test_symbols_walk_independently() -> None:
    alone = Market(seed=5)
    mixed = Market(seed=5)
    path_alone = [alone.mid("ETHBTC", float(t)) for t in range(50)]
    path_mixed = []
    for t in range(50):
        mixed.mid("BTCUSDT", float(t))
        path_mixed.append(mixed.mid("ETHBTC", float(t)))
    assert path_alone == path_mixed


def test_reference_mid_reverts_and_stays_positive() -> None:
    market = Market(seed=1)
    start = symbol_spec("BTCUSDT").start_price
    prices = [market.mid("BTCUSDT", t * 10.0) for t in range(20_000)]  # ~2.3 simulated days
    assert all(math.isfinite(p) and p > 0 for p in prices)
    assert max(prices) < start * 1.11
    assert min(prices) > start / 1.11
    assert len(set(prices)) > 19_000, "it actually moves"


def test_time_going_backwards_does_not_move_the_price() -> None:
    market = Market(seed=3)
    market.mid("ETHBTC", 10.0)
    at_ten = market.mid("ETHBTC", 10.5)
    assert market.mid("ETHBTC", 10.2) == at_ten


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    symbol=st.sampled_from(["ETHBTC", "BTCUSDT", "ETHUSDT", "BTCUSD", "XRPBTC", "QQQWWW"]),
    capacity=st.integers(1, 120),
    steps=st.integers(0, 60),
    dt=st.floats(0.0, 5.0),
)
def test_book_invariants_hold_after_any_steps(
    seed: int, symbol: str, capacity: int, steps: int, dt: float
) -> None:
    market = Market(seed=seed)
    book = market.new_book(
        symbol, rng=market.venue_rng("v", None, symbol), capacity=capacity, now=0.0
    )
    check_invariants(book)
    for i in range(steps):
        book.step((i + 1) * dt)
        check_invariants(book)


def test_steps_are_incremental() -> None:
    market = Market(seed=11)
    book = market.new_book("ETHUSDT", rng=market.venue_rng("v", 1, "ETHUSDT"), capacity=100, now=0)
    kept = []
    for i in range(200):
        before = set(book.bids.ticks(100)) | set(book.asks.ticks(100))
        book.step((i + 1) * 0.05)
        after = set(book.bids.ticks(100)) | set(book.asks.ticks(100))
        kept.append(len(before & after) / len(before))
    assert sum(kept) / len(kept) > 0.85, "a step changes a few levels, not the whole book"
    assert min(kept) < 1.0, "and it does change something"


def test_books_are_deterministic_per_seed_and_differ_per_venue() -> None:
    def run(seed: int, venue: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        market = Market(seed=seed)
        book = market.new_book(
            "ETHBTC", rng=market.venue_rng(venue, None, "ETHBTC"), capacity=20, now=0.0
        )
        for i in range(30):
            book.step(i * 0.1)
        return book.levels(20)

    assert run(9, "binance") == run(9, "binance")
    assert run(9, "binance") != run(9, "bitstamp")
    assert run(9, "binance") != run(10, "binance")


def test_venues_quote_around_the_same_reference() -> None:
    market = Market(seed=21)
    books = [
        market.new_book("ETHBTC", rng=market.venue_rng(v, None, "ETHBTC"), capacity=20, now=0.0)
        for v in ("binance", "bitstamp", "kraken")
    ]
    tick = symbol_spec("ETHBTC").tick
    crossed = 0
    for i in range(1, 300):
        now = i * 0.1
        mid = market.mid("ETHBTC", now)
        for book in books:
            book.step(now)
        tops = [(b.levels(1)[0][0][0] * tick, b.levels(1)[1][0][0] * tick) for b in books]
        for bid, ask in tops:
            assert abs((bid + ask) / 2 - mid) / mid < 0.002
        if max(bid for bid, _ in tops) >= min(ask for _, ask in tops):
            crossed += 1
    # Venues cross now and then (realistic) but not most of the time.
    assert 0 < crossed < 150
