"""Ingest: how fast one core turns venue messages into published, serialized summaries.

A minute of real-format Binance ``depth20@100ms`` and Bitstamp ``order_book`` messages is
recorded from the project's simulators (virtual time, no sockets), in arrival order, and
replayed through the service's own pipeline: adapter (parse, validate, venue book) →
aggregator (merge, Summary serialized once, published to the broadcast). The floor is
``orjson.loads`` alone on the same messages; the ratio to it is the figure to judge.
"""

from __future__ import annotations

import heapq
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import trio
import trio.testing

from aggtrio.aggregator import Aggregator, PublishedSummary
from aggtrio.broadcast import Broadcast
from aggtrio.model import VenueBook
from aggtrio.simulator.binance import BinanceSession, BinanceSimulator, parse_stream, stream_name
from aggtrio.simulator.bitstamp import BitstampSession, BitstampSimulator, channel_name
from aggtrio.simulator.market import Market
from aggtrio.simulator.venue import Channel, Session, SimulatedVenue, data_message
from aggtrio.venues import ADAPTERS

SYMBOLS = ("ETHBTC", "BTCUSDT")
DEPTH = 10
SEED = 2026
# Binance pushes its top 20 every 100 ms, changed or not; Bitstamp sends its top 100 on
# every change, 20 changes a second (the rates the latency benchmark calls realistic).
BINANCE_PUSH_INTERVAL = 0.1
BINANCE_CHANGES_PER_SECOND = 10.0
BITSTAMP_CHANGES_PER_SECOND = 20.0

# (venue, message text), in the order the service would receive them.
Recording = list[tuple[str, str]]


async def _record(seconds: float) -> Recording:
    market = Market(SEED)
    binance = BinanceSimulator(
        market, seed=SEED, interval=BINANCE_PUSH_INTERVAL, updates_per_second=10.0
    )
    bitstamp = BitstampSimulator(market, seed=SEED, updates_per_second=BITSTAMP_CHANGES_PER_SECOND)
    streams = [parse_stream(stream_name(symbol)) for symbol in SYMBOLS]
    binance_session = BinanceSession(
        binance, combined=True, streams=[s for s in streams if s is not None]
    )
    bitstamp_session = BitstampSession(bitstamp)
    binance_channels = {s.symbol: Channel(s.name, s.symbol, s.levels) for s in streams if s}
    bitstamp_channels = {s: Channel(channel_name(s), s, bitstamp.depth) for s in SYMBOLS}

    start = trio.current_time()  # books are created at trio's clock; stay on it
    end = start + seconds
    # (time, tie-break, action, symbol): book moves of both venues and Binance's pushes.
    timeline: list[tuple[float, int, str, str]] = []
    order = 0
    for symbol in SYMBOLS:
        for venue in (binance, bitstamp):
            venue.step(symbol, start)  # the first step creates the book
        for action in ("binance-move", "bitstamp-move", "binance-push"):
            order += 1
            timeline.append((start, order, action, symbol))
    heapq.heapify(timeline)

    def next_time(action: str, symbol: str, now: float) -> float:
        if action == "binance-push":
            return now + BINANCE_PUSH_INTERVAL
        venue: SimulatedVenue = binance if action == "binance-move" else bitstamp
        return now + venue.next_step_delay(venue.symbol_state(symbol))

    recording: Recording = []

    def emit(venue: SimulatedVenue, session: Session, channel: Channel) -> None:
        rendered = venue.render(venue.symbol_state(channel.symbol), channel.depth)
        recording.append((venue.name, data_message(session, channel, rendered)))

    while timeline[0][0] < end:
        now, _, action, symbol = heapq.heappop(timeline)
        if action == "binance-push":
            emit(binance, binance_session, binance_channels[symbol])
        elif action == "binance-move":
            binance.step(symbol, now)
        else:
            bitstamp.step(symbol, now)
            emit(bitstamp, bitstamp_session, bitstamp_channels[symbol])
        order += 1
        heapq.heappush(timeline, (next_time(action, symbol, now), order, action, symbol))
    return recording


def record_messages(seconds: float = 60.0) -> Recording:
    """``seconds`` of both venues' data messages for SYMBOLS, reproducible (seeded)."""
    # A mock clock starts at 0 and never waits: the same recording on every run.
    return trio.run(_record, seconds, clock=trio.testing.MockClock())


class Pipeline:
    """The service's ingest path without its sockets: adapters feeding the aggregator."""

    def __init__(self, venues: Sequence[str], symbols: Sequence[str] = SYMBOLS) -> None:
        self.broadcasts = {symbol: Broadcast[PublishedSummary]() for symbol in symbols}
        self.aggregator = Aggregator(symbols, DEPTH, self.broadcasts)
        self.adapters = {venue: ADAPTERS[venue](symbols, DEPTH) for venue in venues}

    def feed(self, recording: Recording, clock: Callable[[], int] = time.time_ns) -> None:
        adapters, apply = self.adapters, self.aggregator.apply
        for venue, message in recording:
            for event in adapters[venue].handle_message(message, clock()):
                if isinstance(event, VenueBook):
                    apply(event)


def _time_pipeline(recording: Recording, rounds: int) -> tuple[float, int]:
    """Median ns per message over `rounds` fresh pipelines, and summaries published."""
    venues = sorted({venue for venue, _ in recording})
    samples = []
    published = 0
    for _ in range(rounds):
        pipeline = Pipeline(venues)
        started = time.process_time_ns()
        pipeline.feed(recording)
        samples.append((time.process_time_ns() - started) / len(recording))
        published = pipeline.aggregator.summaries_published
    return statistics.median(samples), published


def _time_floor(recording: Recording, rounds: int) -> float:
    """Median ns per message of ``orjson.loads`` alone on the same messages."""
    messages = [message for _, message in recording]
    loads = orjson.loads
    samples = []
    for _ in range(rounds):
        started = time.process_time_ns()
        for message in messages:
            loads(message)
        samples.append((time.process_time_ns() - started) / len(messages))
    return statistics.median(samples)


def run_ingest_bench(*, quick: bool = False) -> dict[str, Any]:
    """Ingest cost per venue message, its orjson floor and their ratio (JSON-able)."""
    recording = record_messages(10.0 if quick else 60.0)
    rounds = 3 if quick else 9
    _time_pipeline(recording, 1)  # warm-up: first-use caches, allocator
    pipeline_ns, published = _time_pipeline(recording, rounds)
    floor_ns = _time_floor(recording, rounds)
    venues: dict[str, Any] = {}
    for venue in sorted({venue for venue, _ in recording}):
        own = [entry for entry in recording if entry[0] == venue]
        venue_ns, _ = _time_pipeline(own, rounds)
        venue_floor_ns = _time_floor(own, rounds)
        venues[venue] = {
            "messages": len(own),
            "us_per_message": venue_ns / 1000,
            "floor_us_per_message": venue_floor_ns / 1000,
            "ratio": venue_ns / venue_floor_ns,
        }
    return {
        "messages": len(recording),
        "summaries_published": published,
        "us_per_message": pipeline_ns / 1000,
        "floor_us_per_message": floor_ns / 1000,
        "ratio": pipeline_ns / floor_ns,
        "messages_per_second": 1e9 / pipeline_ns,
        "venues": venues,
    }
