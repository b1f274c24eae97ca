"""Ingest: how fast one core turns venue messages into published, serialized summaries.

A minute of real-format venue messages is recorded from the project's simulators (virtual
time, no sockets, seeded), in arrival order, and replayed through the service's own
pipeline: adapter (parse, validate, venue book) → aggregator (merge, Summary serialized
once, published to the broadcast). The floor is ``orjson.loads`` alone on the same
messages; the ratio to it is the figure to judge.

The whole-book venues send what they always do: Binance its top 20 every 100 ms, Bitstamp
its top 100 on every change. Each delta venue (Kraken, Coinbase, OKX, Bybit) is one
connection subscribed to the same symbols, as the service's adapter subscribes: the
subscribe requests are the adapter's own, answered by the simulator's session (acks, then
one snapshot per symbol), and then the deltas, each built by the session itself from the
change since the last message (with its real sequence numbers and checksums), on every
change or, for OKX, every 100 ms.
"""

from __future__ import annotations

import heapq
import itertools
import statistics
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import Any

import orjson
import trio
import trio.testing

from aggtrio.aggregator import Aggregator, PublishedSummary
from aggtrio.bench.processes import BenchError
from aggtrio.broadcast import Broadcast
from aggtrio.model import VenueBook
from aggtrio.simulator.binance import BinanceSession, BinanceSimulator, parse_stream, stream_name
from aggtrio.simulator.bitstamp import BitstampSession, BitstampSimulator, channel_name
from aggtrio.simulator.delta import DeltaSession, DeltaVenue, OfflineSubscription
from aggtrio.simulator.market import Market
from aggtrio.simulator.runner import SIMULATORS
from aggtrio.simulator.venue import Channel, OfflineClient, SimulatedVenue, data_message
from aggtrio.venues import ADAPTERS
from aggtrio.venues.base import MalformedMessageError, Resync

SYMBOLS = ("ETHBTC", "BTCUSDT")
DEPTH = 10
SEED = 2026
# Binance pushes its top 20 every 100 ms, changed or not; Bitstamp sends its top 100 on
# every change, 20 changes a second (the rates the latency benchmark calls realistic).
BINANCE_PUSH_INTERVAL = 0.1
BINANCE_CHANGES_PER_SECOND = 10.0
BITSTAMP_CHANGES_PER_SECOND = 20.0

WHOLE_BOOK_VENUES = ("binance", "bitstamp")
# Recorded at their simulators' default rates: ~20 changes a second per symbol, as busy
# books of these venues change; OKX batches each symbol's changes into a push per 100 ms.
DELTA_VENUES = ("kraken", "coinbase", "okx", "bybit")
VENUES = WHOLE_BOOK_VENUES + DELTA_VENUES
# Groups also measured together: the two venues the benchmark recorded before the delta
# venues, so earlier figures stay comparable.
COMBINED = {"binance+bitstamp": WHOLE_BOOK_VENUES}

# (venue, message text), in the order the service would receive them.
Recording = list[tuple[str, str]]
# Something that happens in virtual time: it runs at a time and says when it runs next.
Action = Callable[[float], float]


class _Timeline:
    """Actions in virtual time, run in time order; ties run in the order they were queued."""

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Action]] = []
        self._order = itertools.count()

    def at(self, when: float, action: Action) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def run_until(self, end: float) -> None:
        queue = self._queue
        while queue and queue[0][0] < end:
            now, _, action = heapq.heappop(queue)
            self.at(action(now), action)


def _simulator(name: str, market: Market) -> SimulatedVenue:
    """A venue's simulator at the rates this benchmark records."""
    if name == "binance":
        return BinanceSimulator(
            market,
            seed=SEED,
            interval=BINANCE_PUSH_INTERVAL,
            updates_per_second=BINANCE_CHANGES_PER_SECOND,
        )
    if name == "bitstamp":
        return BitstampSimulator(market, seed=SEED, updates_per_second=BITSTAMP_CHANGES_PER_SECOND)
    # Each delta venue a seed of its own: with one seed, venues with the same rate and
    # book depth would change at the same instants, in the same way.
    return SIMULATORS[name](market, seed=SEED + 1 + DELTA_VENUES.index(name))


async def _delta_subscriptions(venue: DeltaVenue) -> tuple[list[str], list[OfflineSubscription]]:
    """What one connection to `venue` gets when the service's adapter subscribes on it: the
    replies to its requests, and the subscriptions whose data follows."""
    adapter = ADAPTERS[venue.name](SYMBOLS, DEPTH)
    path = urllib.parse.urlsplit(adapter.connect_url("ws://simulator")).path
    session = venue.open_session(path)
    if not isinstance(session, DeltaSession):
        raise TypeError(f"{venue.name} simulator did not open a delta session for {path!r}")
    client = OfflineClient(venue, session)
    for request in adapter.subscribe_messages():
        await session.received(client, request)
    replies = [m if isinstance(m, str) else m.decode() for m in client.sent]
    channels = session.channels()
    if sorted(channel.symbol for channel in channels) != sorted(SYMBOLS):
        raise RuntimeError(f"{venue.name}: subscribed to {channels}, replies {replies}")
    return replies, [OfflineSubscription(session, channel) for channel in channels]


def _moves(venue: SimulatedVenue, symbol: str, then: Callable[[], None] | None = None) -> Action:
    """The venue's book of `symbol` changes at its random times; `then` runs after each."""
    state = venue.symbol_state(symbol)

    def move(now: float) -> float:
        venue.step(symbol, now)
        if then is not None:
            then()
        return now + venue.next_step_delay(state)

    return move


def _every(interval: float, then: Callable[[], None]) -> Action:
    def push(now: float) -> float:
        then()
        return now + interval

    return push


class _Recorder:
    """The venues of one recording around one market, and what they send, in order."""

    def __init__(self, venues: Sequence[str]) -> None:
        market = Market(SEED)
        self.simulators = {name: _simulator(name, market) for name in venues}
        self.start = trio.current_time()  # books are created at trio's clock; stay on it
        self.recording: Recording = []
        # Per symbol, what to queue at the start: each venue's book moves, then the timed
        # pushes (the order they run in when they fall on the same instant).
        self.moves: dict[str, list[tuple[float, Action]]] = {s: [] for s in SYMBOLS}
        self.pushes: dict[str, list[tuple[float, Action]]] = {s: [] for s in SYMBOLS}

    def record(self, venue: str, message: str | None) -> None:
        if message is not None:
            self.recording.append((venue, message))

    async def run(self, seconds: float) -> Recording:
        for symbol in SYMBOLS:
            for simulator in self.simulators.values():
                simulator.step(symbol, self.start)  # the first step creates the book
        for simulator in self.simulators.values():
            if isinstance(simulator, BinanceSimulator):
                self._binance(simulator)
            elif isinstance(simulator, BitstampSimulator):
                self._bitstamp(simulator)
            elif isinstance(simulator, DeltaVenue):
                await self._delta(simulator)
        timeline = _Timeline()
        for symbol in SYMBOLS:
            for when, action in self.moves[symbol] + self.pushes[symbol]:
                timeline.at(when, action)
        timeline.run_until(self.start + seconds)
        return self.recording

    def _binance(self, binance: BinanceSimulator) -> None:
        """The top 20 every 100 ms on one combined-stream connection, changed or not."""
        streams = [s for s in map(parse_stream, map(stream_name, SYMBOLS)) if s is not None]
        session = BinanceSession(binance, combined=True, streams=streams)
        for stream in streams:
            channel = Channel(stream.name, stream.symbol, stream.levels)

            def push(channel: Channel = channel) -> None:
                rendered = binance.render(binance.symbol_state(channel.symbol), channel.depth)
                self.record(binance.name, data_message(session, channel, rendered))

            self.moves[stream.symbol].append((self.start, _moves(binance, stream.symbol)))
            self.pushes[stream.symbol].append((self.start, _every(BINANCE_PUSH_INTERVAL, push)))

    def _bitstamp(self, bitstamp: BitstampSimulator) -> None:
        """The top 100 on every change."""
        session = BitstampSession(bitstamp)
        for symbol in SYMBOLS:
            channel = Channel(channel_name(symbol), symbol, bitstamp.depth)

            def send(channel: Channel = channel) -> None:
                rendered = bitstamp.render(bitstamp.symbol_state(channel.symbol), channel.depth)
                self.record(bitstamp.name, data_message(session, channel, rendered))

            self.moves[symbol].append((self.start, _moves(bitstamp, symbol, send)))

    async def _delta(self, venue: DeltaVenue) -> None:
        """One connection: the acks and a snapshot per symbol now, then the deltas on every
        change or every `push_interval`."""
        replies, subscriptions = await _delta_subscriptions(venue)
        for reply in replies:
            self.record(venue.name, reply)
        for subscription in subscriptions:
            self.record(venue.name, subscription.snapshot())
        for subscription in subscriptions:
            symbol = subscription.channel.symbol

            def send(subscription: OfflineSubscription = subscription) -> None:
                self.record(venue.name, subscription.update())

            first_move = self.start + venue.next_step_delay(venue.symbol_state(symbol))
            interval = venue.push_interval
            if interval is None:
                self.moves[symbol].append((first_move, _moves(venue, symbol, send)))
            else:
                self.moves[symbol].append((first_move, _moves(venue, symbol)))
                self.pushes[symbol].append((self.start + interval, _every(interval, send)))


async def _record(seconds: float, venues: Sequence[str]) -> Recording:
    return await _Recorder(venues).run(seconds)


def record_messages(seconds: float = 60.0, venues: Sequence[str] = WHOLE_BOOK_VENUES) -> Recording:
    """``seconds`` of the venues' messages for SYMBOLS, reproducible (seeded): the book
    contents and order are the same on every run; only wall-clock timestamps in the
    messages differ. By default Binance's and Bitstamp's only; the benchmark takes VENUES."""
    unknown = set(venues) - set(VENUES)
    if unknown:
        raise ValueError(f"no recording for {sorted(unknown)} (known: {', '.join(VENUES)})")
    # A mock clock starts at 0 and never waits: the same recording on every run.
    return trio.run(_record, seconds, venues, clock=trio.testing.MockClock())


class Pipeline:
    """The service's ingest path without its sockets: adapters feeding the aggregator.

    Each adapter is asked for its subscribe requests, as the feed does on connecting (some
    match the venue's acks to them). Per venue it counts the books its adapter published,
    its resyncs and the messages it found malformed (the feed logs and skips those).
    """

    def __init__(self, venues: Sequence[str], symbols: Sequence[str] = SYMBOLS) -> None:
        self.broadcasts = {symbol: Broadcast[PublishedSummary]() for symbol in symbols}
        self.aggregator = Aggregator(symbols, DEPTH, self.broadcasts)
        self.adapters = {venue: ADAPTERS[venue](symbols, DEPTH) for venue in venues}
        for adapter in self.adapters.values():
            adapter.subscribe_messages()
        self.books: Counter[str] = Counter()
        self.resyncs: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()

    def feed(self, recording: Recording, clock: Callable[[], int] = time.time_ns) -> None:
        adapters, apply = self.adapters, self.aggregator.apply
        books, resyncs = self.books, self.resyncs
        for venue, message in recording:
            try:
                events = adapters[venue].handle_message(message, clock())
            except MalformedMessageError:
                self.malformed[venue] += 1
                continue
            for event in events:
                if isinstance(event, VenueBook):
                    apply(event)
                    books[venue] += 1
                elif isinstance(event, Resync):
                    resyncs[venue] += 1


def _time_pipeline(recording: Recording) -> tuple[float, Pipeline]:
    """CPU ns per message of a fresh pipeline fed `recording`, and that pipeline."""
    pipeline = Pipeline(sorted({venue for venue, _ in recording}))
    started = time.process_time_ns()
    pipeline.feed(recording)
    return (time.process_time_ns() - started) / len(recording), pipeline


def _time_floor(messages: list[str]) -> float:
    """CPU ns per message of ``orjson.loads`` alone on the same messages."""
    loads = orjson.loads
    started = time.process_time_ns()
    for message in messages:
        loads(message)
    return (time.process_time_ns() - started) / len(messages)


def _measure(recording: Recording, rounds: int) -> dict[str, Any]:
    """One row: the pipeline and the floor on `recording` (medians of `rounds`, taken in
    turns, so load from outside moves both alike), and what the adapters did."""
    messages = [message for _, message in recording]
    pipeline_samples, floor_samples = [], []
    for _ in range(rounds):
        ns, pipeline = _time_pipeline(recording)
        pipeline_samples.append(ns)
        floor_samples.append(_time_floor(messages))
    pipeline_ns = statistics.median(pipeline_samples)
    floor_ns = statistics.median(floor_samples)
    return {
        "messages": len(recording),
        "bytes_per_message": round(sum(map(len, messages)) / len(messages)),
        "us_per_message": pipeline_ns / 1000,
        "floor_us_per_message": floor_ns / 1000,
        "ratio": pipeline_ns / floor_ns,
        "messages_per_second": 1e9 / pipeline_ns,
        "summaries_published": pipeline.aggregator.summaries_published,
        "books_published": dict(pipeline.books),
        "resyncs": dict(pipeline.resyncs),
        "malformed": dict(pipeline.malformed),
    }


def _only(recording: Recording, venues: Collection[str]) -> Recording:
    return [entry for entry in recording if entry[0] in venues]


def check_replay(row: dict[str, Any], venues: Collection[str]) -> list[str]:
    """Why a replay does not measure what it should: a venue that published no book, or
    any resync or malformed message (the recording, not the service, would be wrong)."""
    problems = []
    for venue in sorted(venues):
        if not row["books_published"].get(venue):
            problems.append(f"{venue} published no book")
        if row["resyncs"].get(venue):
            problems.append(f"{venue} resynced {row['resyncs'][venue]} times")
        if row["malformed"].get(venue):
            problems.append(f"{venue} found {row['malformed'][venue]} messages malformed")
    return problems


def run_ingest_bench(*, quick: bool = False) -> dict[str, Any]:
    """Ingest cost per venue message, its orjson floor and their ratio (JSON-able): for all
    venues' messages as received, each venue's alone, and the COMBINED groups."""
    seconds = 10.0 if quick else 60.0
    recording = record_messages(seconds, VENUES)
    rounds = 3 if quick else 9
    _time_pipeline(recording)  # warm-up: first-use caches, allocator
    result = _measure(recording, rounds)
    result["venues"] = {venue: _measure(_only(recording, {venue}), rounds) for venue in VENUES}
    problems = check_replay(result, VENUES)
    for venue, row in result["venues"].items():
        problems += [f"{problem} (alone)" for problem in check_replay(row, {venue})]
    if problems:
        raise BenchError(f"the replay of the recording went wrong: {'; '.join(problems)}")
    result["combined"] = {
        label: _measure(_only(recording, group), rounds) for label, group in COMBINED.items()
    }
    result["recorded_seconds"] = seconds
    result["symbols"] = list(SYMBOLS)
    return result
