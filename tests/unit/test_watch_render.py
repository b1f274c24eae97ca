"""Pure parts of ``aggtrio watch``: address parsing, JSON lines, the rendered ladder, stats."""

from __future__ import annotations

import io
import json
import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console, RenderableType

from aggtrio import watch
from aggtrio._proto.orderbook_pb2 import Level, Summary
from aggtrio.watch import (
    EXCHANGE_COLOURS,
    FALLBACK_COLOUR,
    LatencyWindow,
    RateWindow,
    WatchState,
    exchange_text,
    fit_depth,
    is_resend,
    parse_server_address,
    render_book,
    render_view,
    summary_to_json,
)

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def to_text(renderable: RenderableType) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=100, color_system=None).print(renderable)
    return buffer.getvalue()


def book(
    asks: list[tuple[str, float, float]],
    bids: list[tuple[str, float, float]],
    spread: float | None = None,
    arrival: int = T0,
    live: tuple[str, ...] = (),
) -> Summary:
    if spread is None:
        spread = asks[0][1] - bids[0][1] if asks and bids else math.nan
    return Summary(
        spread=spread,
        asks=[Level(exchange=e, price=p, amount=a) for e, p, a in asks],
        bids=[Level(exchange=e, price=p, amount=a) for e, p, a in bids],
        arrival_time=arrival,
        live_exchanges=live,
    )


# -- parse_server_address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:50051", ("localhost", 50051)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:50051", ("::1", 50051)),
        ("  example.com:65535 ", ("example.com", 65535)),
    ],
)
def test_parse_server_address_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_server_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        ":50051",
        "localhost:",
        "localhost:http",
        "localhost:0",
        "localhost:65536",
        "localhost:-1",
        "::1:50051",
        "[::1]",
        "[::1]50051",
        "[::1:50051",
        "[]:50051",
        "local host:50051",
        "http://localhost:50051",
        "localhost:\uff15\uff10",  # fullwidth digits
    ],
)
def test_parse_server_address_rejects_with_one_line(text: str) -> None:
    with pytest.raises(ValueError, match=r".") as info:
        parse_server_address(text)
    assert "\n" not in str(info.value)


# -- summary_to_json --------------------------------------------------------------------------


def test_json_shape_and_values() -> None:
    summary = book(
        asks=[("bitstamp", 0.0346, 0.5), ("binance", 0.0347, 3.0)],
        bids=[("binance", 0.0345, 1.25)],
        spread=0.0001,
        arrival=T0,
        live=("binance", "bitstamp"),
    )
    line = summary_to_json("ETHBTC", summary, T0 + 2_500_000)
    assert b"\n" not in line
    assert b" " not in line  # compact
    doc = json.loads(line)
    assert list(doc) == [
        "symbol",
        "spread",
        "bids",
        "asks",
        "arrival_time",
        "latency_ms",
        "live_exchanges",
    ]
    assert doc == {
        "symbol": "ETHBTC",
        "spread": 0.0001,
        "bids": [{"exchange": "binance", "price": 0.0345, "amount": 1.25}],
        "asks": [
            {"exchange": "bitstamp", "price": 0.0346, "amount": 0.5},
            {"exchange": "binance", "price": 0.0347, "amount": 3.0},
        ],
        "arrival_time": T0,
        "latency_ms": 2.5,
        "live_exchanges": ["binance", "bitstamp"],
    }


def test_json_nan_spread_is_null_and_default_symbol_is_null() -> None:
    summary = book(asks=[], bids=[("binance", 1.0, 2.0)])
    assert math.isnan(summary.spread)
    doc = json.loads(summary_to_json(None, summary, T0))
    assert doc["spread"] is None
    assert doc["symbol"] is None
    assert doc["asks"] == []
    assert doc["latency_ms"] == 0.0


def test_json_without_arrival_time_has_null_latency() -> None:
    doc = orjson.loads(summary_to_json("X", book([], [], arrival=0), T0))
    assert doc["arrival_time"] == 0
    assert doc["latency_ms"] is None


def _reject_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


@given(
    spread=st.floats(),
    prices=st.lists(st.floats(), max_size=10),
    arrival=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_json_is_always_strict_json(spread: float, prices: list[float], arrival: int) -> None:
    levels = [("okx", p, p) for p in prices]
    summary = book(asks=levels, bids=levels, spread=spread, arrival=arrival)
    doc = json.loads(summary_to_json("X", summary, T0), parse_constant=_reject_constant)
    assert len(doc["asks"]) == len(prices)


# -- render_book / render_view ----------------------------------------------------------------


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


def test_ladder_asks_highest_first_above_spread_then_bids_best_first() -> None:
    summary = book(
        asks=[("binance", 101.0, 1.0), ("bitstamp", 102.5, 2.0), ("kraken", 103.0, 3.0)],
        bids=[("bitstamp", 100.0, 4.0), ("binance", 99.25, 5.0), ("okx", 98.0, 6.0)],
    )
    text = to_text(render_book(summary))
    lines = [r for r in rows(text) if r[0] in {"ask", "bid", "spread"}]
    assert [r[0] for r in lines] == ["ask"] * 3 + ["spread"] + ["bid"] * 3
    assert [r[2] for r in lines if r[0] != "spread"] == [
        "103.00", "102.50", "101.00", "100.00", "99.25", "98.00",
    ]  # fmt: skip
    assert [r[1] for r in lines if r[0] != "spread"] == [
        "kraken", "bitstamp", "binance", "bitstamp", "binance", "okx",
    ]  # fmt: skip
    spread_row = next(r for r in lines if r[0] == "spread")
    assert spread_row[1] == "1.00"
    # The best ask is the last ask printed before the spread line.
    all_lines = text.splitlines()
    spread_at = next(i for i, line in enumerate(all_lines) if line.startswith("spread"))
    last_ask_at = max(i for i, line in enumerate(all_lines) if line.startswith("ask"))
    first_bid_at = min(i for i, line in enumerate(all_lines) if line.startswith("bid"))
    assert last_ask_at < spread_at < first_bid_at
    assert "101.00" in all_lines[last_ask_at]
    assert "100.00" in all_lines[first_bid_at]


def test_ladder_aligns_decimal_points() -> None:
    summary = book(
        asks=[("binance", 0.03451, 12.5), ("bitstamp", 0.0346, 0.123456)],
        bids=[("kraken", 0.0345, 100.0)],
    )
    text = to_text(render_book(summary))
    priced = [line for line in text.splitlines() if line.startswith(("ask", "bid"))]
    price_dots = {line.index("0.034") + 1 for line in priced}
    assert len(price_dots) == 1
    amount_dots = {line.rstrip().rindex(".") for line in priced}
    assert len(amount_dots) == 1
    assert "0.03451" in text
    assert "0.03460" in text
    assert "100.000000" in text


def test_ladder_handles_empty_sides_and_nan_spread() -> None:
    text = to_text(render_book(book(asks=[], bids=[])))
    assert "no asks" in text
    assert "no bids" in text
    spread_line = next(line for line in text.splitlines() if line.startswith("spread"))
    assert "—" in spread_line
    assert "nan" not in text.lower()


def test_ladder_negative_spread_when_venues_cross() -> None:
    summary = book(asks=[("binance", 99.5, 1.0)], bids=[("bitstamp", 100.0, 1.0)])
    spread_line = next(
        line for line in to_text(render_book(summary)).splitlines() if line.startswith("spread")
    )
    assert "-0.5" in spread_line


def test_waiting_for_data_before_the_first_summary() -> None:
    state = WatchState(symbol="ETHBTC", server="localhost:50051", started_ns=T0)
    text = to_text(render_view(state, T0 + S))
    assert "waiting for data" in text
    assert "ETHBTC" in text
    assert "localhost:50051" in text
    assert "summaries 0" in text


def test_header_shows_rate_latency_count_and_venues() -> None:
    state = WatchState(symbol=None, server="[::1]:50051", started_ns=T0)
    summary = book(
        asks=[("kraken", 2.0, 1.0)],
        bids=[("binance", 1.0, 1.0), ("kraken", 0.5, 1.0)],
        arrival=T0,
    )
    for i in range(10):
        summary.arrival_time = T0 + i * S // 10
        state.record(summary, T0 + i * S // 10 + 3 * MS)
    text = to_text(render_view(state, T0 + 2 * S))
    assert "default symbol" in text
    assert "[::1]:50051" in text
    assert "summaries 10" in text
    assert "rate 5.0/s" in text  # 10 in the 2 s since the subscription started
    assert "3.00 ms" in text
    assert "p50 3.00 ms" in text
    # A server that predates live_exchanges: the venues in the levels stand in.
    assert "live venues: binance kraken" in text


def test_header_shows_live_venues_and_the_ones_that_dropped_out() -> None:
    state = WatchState(symbol="ETHBTC", server="h:1", started_ns=T0)
    bids = [("binance", 1.0, 1.0)]
    state.record(book([("binance", 2.0, 1.0)], bids, live=("binance", "bitstamp")), T0)
    text = to_text(render_view(state, T0))
    assert "live venues: binance bitstamp" in text
    assert "down" not in text
    state.record(book([("binance", 2.0, 1.0)], bids, arrival=T0 + S, live=("binance",)), T0 + S)
    assert "live venues: binance  down: bitstamp" in to_text(render_view(state, T0 + S))
    state.record(book([], [], arrival=T0 + 2 * S, live=()), T0 + 2 * S)
    assert "live venues: —  down: binance bitstamp" in to_text(render_view(state, T0 + 2 * S))


def test_header_flags_a_stalled_stream() -> None:
    state = WatchState(symbol="ETHBTC", server="h:1", started_ns=T0)
    state.record(book([("okx", 2.0, 1.0)], []), T0)
    assert "last update" not in to_text(render_view(state, T0 + S))
    assert "last update 7 s ago" in to_text(render_view(state, T0 + 7 * S))


def test_short_terminal_shows_fewer_levels_and_says_so() -> None:
    state = WatchState(symbol="ETHBTC", server="h:1", started_ns=T0)
    levels = [("okx", 100.0 + i, 1.0) for i in range(10)]
    state.record(book(asks=levels, bids=[("okx", 99.0 - i, 1.0) for i in range(10)]), T0)
    full = to_text(render_view(state, T0))
    assert "showing" not in full
    short = to_text(render_view(state, T0, depth=3))
    assert "showing 3 of 10 levels per side" in short
    prices = [r[2] for r in rows(short) if r[0] in {"ask", "bid"}]
    assert prices == ["102", "101", "100", "99", "98", "97"]
    # Exactly the chrome plus two sides fit, so fit_depth's arithmetic is right.
    assert len(short.splitlines()) == watch.VIEW_CHROME_LINES + 2 * 3


@pytest.mark.parametrize(("height", "depth"), [(24, 7), (29, 9), (30, 10), (60, 10), (5, 1)])
def test_fit_depth(height: int, depth: int) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, height=height)
    assert fit_depth(terminal) == depth
    assert fit_depth(Console(file=io.StringIO(), height=height)) == 10  # not a terminal


def test_exchange_colours() -> None:
    assert set(EXCHANGE_COLOURS) == {"binance", "bitstamp", "kraken", "coinbase", "okx", "bybit"}
    assert len(set(EXCHANGE_COLOURS.values())) == len(EXCHANGE_COLOURS)
    assert str(exchange_text("binance").style) == EXCHANGE_COLOURS["binance"]
    assert str(exchange_text("newvenue").style) == FALLBACK_COLOUR


# -- statistics -------------------------------------------------------------------------------


def test_rate_window_steady_stream() -> None:
    rate = RateWindow(start_ns=T0, window_s=5.0)
    for i in range(100):  # 10/s for 10 s
        rate.record(T0 + i * S // 10)
    assert rate.rate(T0 + 10 * S) == pytest.approx(10.0, abs=0.3)


def test_rate_window_early_and_after_silence() -> None:
    rate = RateWindow(start_ns=T0, window_s=5.0)
    for i in range(5):
        rate.record(T0 + i * MS)
    # Within the first second the divisor is one second, not a few milliseconds.
    assert rate.rate(T0 + 10 * MS) == 5.0
    assert rate.rate(T0 + 2 * S) == 2.5
    assert rate.rate(T0 + 6 * S) == 0.0


def test_latency_window_percentiles() -> None:
    lat = LatencyWindow(window_s=5.0)
    assert lat.snapshot(T0).p50_ms is None
    for i in range(1, 101):  # 1..100 ms, recorded out of order
        ms = (i * 37) % 100 + 1
        lat.record(T0, T0 + ms * MS)
    snap = lat.snapshot(T0 + S)
    assert snap.p50_ms == 50.0
    assert snap.p99_ms == 99.0
    assert snap.last_ms == float((100 * 37) % 100 + 1)


def test_latency_window_forgets_old_samples_and_ignores_missing_arrival() -> None:
    lat = LatencyWindow(window_s=5.0, max_samples=3)
    lat.record(0, T0)  # no arrival_time: nothing to measure
    assert lat.snapshot(T0).last_ms is None
    for ms in (100, 1, 2, 3):
        lat.record(T0, T0 + ms * MS)
    snap = lat.snapshot(T0 + S)
    assert snap.p99_ms == 3.0  # the 100 ms sample fell out of the bounded buffer
    later = lat.snapshot(T0 + 10 * S)
    assert later.p50_ms is None
    assert later.last_ms == 3.0


# -- resends ----------------------------------------------------------------------------------


def test_a_resend_is_a_summary_with_the_previous_arrival_time() -> None:
    assert not is_resend(book([("okx", 2.0, 1.0)], [], arrival=T0), None)
    assert is_resend(book([("okx", 2.0, 1.0)], [], arrival=T0), T0)
    assert not is_resend(book([("okx", 2.0, 1.0)], [], arrival=T0 + 1), T0)
    # Without arrival times (0) there is no telling: every summary counts.
    assert not is_resend(book([], [], arrival=0), 0)


def test_resends_do_not_count_as_updates_in_rate_latency_or_count() -> None:
    state = WatchState(symbol="ETHBTC", server="h:1", started_ns=T0)
    first = book([("okx", 2.0, 1.0)], [], arrival=T0)
    assert state.record(first, T0 + 3 * MS)
    # The server resends it once a second while the book is quiet.
    for second in range(1, 5):
        assert not state.record(book([("okx", 2.0, 1.0)], [], arrival=T0), T0 + second * S)
    assert state.count == 1
    assert state.last_received_ns == T0 + 3 * MS
    text = to_text(render_view(state, T0 + 4 * S + MS))
    assert "summaries 1" in text
    assert "rate 0.2/s" in text  # 1 in 5 s, not 5
    assert "p99 3.00 ms" in text  # not the 4 s age of the resent summary
    assert state.record(book([("okx", 2.5, 1.0)], [], arrival=T0 + 4 * S), T0 + 4 * S + 2 * MS)
    assert state.count == 2


class Summaries:
    """An async iterator over fixed summaries, standing in for a gRPC stream."""

    def __init__(self, summaries: list[Summary]) -> None:
        self._summaries = iter(summaries)

    def __aiter__(self) -> Summaries:
        return self

    async def __anext__(self) -> Summary:
        try:
            return next(self._summaries)
        except StopIteration:
            raise StopAsyncIteration from None


async def test_json_lines_skip_resends_and_count_only_changes() -> None:
    a, b, c = (book([("okx", 2.0 + i, 1.0)], [], arrival=T0 + i) for i in range(3))
    received = [a, a, a, b, b, c]
    out = io.StringIO()
    await watch._run_json(Summaries(received), "ETHBTC", None, out)
    arrivals = [json.loads(line)["arrival_time"] for line in out.getvalue().splitlines()]
    assert arrivals == [T0, T0 + 1, T0 + 2]

    out = io.StringIO()
    outcome = await watch._run_json(Summaries(received), "ETHBTC", 2, out)
    assert outcome.code == 0
    assert len(out.getvalue().splitlines()) == 2
