"""Bybit end to end: the generic Feed with the Bybit adapter against the Bybit simulator, over
real WebSocket connections. The feed's published book must equal what the simulator sent,
through continuity faults, re-sent snapshots, server disconnects and malformed messages."""

from __future__ import annotations

import functools

import pytest
import trio

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.app import RunningService, run_service
from aggtrio.config import ServeConfig
from aggtrio.feed import Feed, FeedState
from aggtrio.model import BookEvent, VenueBook, VenueDown
from aggtrio.simulator import MALFORMED_KINDS, BinanceSimulator, Market, SimulatedVenue
from aggtrio.simulator.bybit import BybitSimulator
from aggtrio.venues.bybit import BybitAdapter

from .feeds import start_feed, wait_until
from .harness import first_summary, levels, naive_merge

SYMBOLS = ("ETHBTC", "BTCUSDT")
DEPTH = 10
TIMEOUT = 5.0


class FastPings(BybitAdapter):
    """Bybit with a 0.2 s heartbeat, so ping timeouts can be tested in about a second."""

    heartbeat_interval = 0.2


@pytest.fixture
async def bybit(nursery: trio.Nursery) -> BybitSimulator:
    venue = BybitSimulator(Market(seed=21), seed=21)
    await nursery.start(venue.serve)
    return venue


class Watch:
    """A Feed against the venue, and everything it has published so far."""

    def __init__(
        self, feed: Feed, receive: trio.MemoryReceiveChannel[BookEvent], venue: BybitSimulator
    ) -> None:
        self.feed = feed
        self.venue = venue
        self.events: list[BookEvent] = []
        self.latest: dict[str, VenueBook] = {}
        self._receive = receive

    async def collect(self) -> None:
        async for event in self._receive:
            self.events.append(event)
            if isinstance(event, VenueBook):
                self.latest[event.symbol] = event
            else:
                for symbol in event.symbols:
                    self.latest.pop(symbol, None)

    def matches(self, symbol: str) -> bool:
        """The feed's book for `symbol` is the top of what the venue last sent."""
        sent = self.venue.book(symbol)
        book = self.latest.get(symbol)
        if sent is None or book is None:
            return False
        return book.bids == sent.bids[:DEPTH] and book.asks == sent.asks[:DEPTH]

    async def settle(self) -> None:
        """Freeze the market, then wait until the feed holds exactly what was last sent."""
        self.venue.freeze()
        with trio.fail_after(TIMEOUT):
            await wait_until(lambda: all(self.matches(symbol) for symbol in SYMBOLS))
        self.venue.unfreeze()

    def downs(self, symbol: str) -> list[VenueDown]:
        return [e for e in self.events if isinstance(e, VenueDown) and symbol in e.symbols]

    async def down_and_back(self) -> None:
        """Wait until both symbols were reported down and then published again."""
        with trio.fail_after(TIMEOUT):
            await wait_until(lambda: all(self.downs(symbol) for symbol in SYMBOLS))
            await wait_until(lambda: set(self.latest) == set(SYMBOLS))


async def watch(nursery: trio.Nursery, venue: BybitSimulator, **options: object) -> Watch:
    adapter = options.pop("adapter", None) or BybitAdapter(SYMBOLS, DEPTH)
    assert isinstance(adapter, BybitAdapter)
    feed, receive = start_feed(nursery, adapter, venue.url, **options)
    watching = Watch(feed, receive, venue)
    nursery.start_soon(watching.collect)
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: set(watching.latest) == set(SYMBOLS))
    return watching


async def test_the_feed_holds_the_venues_book_for_two_symbols(
    nursery: trio.Nursery, bybit: BybitSimulator
) -> None:
    watching = await watch(nursery, bybit)
    await trio.sleep(0.5)  # a few dozen deltas per symbol
    await watching.settle()
    assert watching.feed.stats.state is FeedState.LIVE
    assert watching.feed.stats.resyncs == 0
    assert watching.feed.stats.malformed == 0
    assert bybit.connections_total == 1
    # Both symbols went in one subscribe request (spot takes up to 10 topics per request).
    assert bybit.subscribe_requests == 1
    assert not [e for e in watching.events if isinstance(e, VenueDown)]


@pytest.mark.parametrize("fault", BybitSimulator.supported_faults)
async def test_a_continuity_fault_costs_one_resync_of_that_symbol_only(
    nursery: trio.Nursery, bybit: BybitSimulator, fault: str
) -> None:
    watching = await watch(nursery, bybit)
    subscribed = bybit.subscribe_requests
    assert bybit.inject(fault, "ETHBTC") == 1
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: bool(watching.downs("ETHBTC")))
        await wait_until(lambda: "ETHBTC" in watching.latest)  # back, from a new snapshot
    await trio.sleep(0.3)  # deltas after the new snapshot apply cleanly
    await watching.settle()
    stats = watching.feed.stats
    assert stats.resyncs == 1
    assert stats.reconnects == 0
    assert stats.malformed == 0
    assert bybit.subscribe_requests == subscribed + 1  # the one topic, on the same connection
    (down,) = watching.downs("ETHBTC")
    assert down.symbols == ("ETHBTC",)
    assert "resync" in down.reason
    assert not watching.downs("BTCUSDT")


@pytest.mark.parametrize("restart", [False, True], ids=["resent", "service-restart"])
async def test_a_snapshot_mid_stream_resets_the_book_without_a_resync(
    nursery: trio.Nursery, bybit: BybitSimulator, restart: bool
) -> None:
    watching = await watch(nursery, bybit)
    assert bybit.send_snapshot(restart=restart) == 2
    await trio.sleep(0.3)
    await watching.settle()
    assert watching.feed.stats.resyncs == 0
    assert not [e for e in watching.events if isinstance(e, VenueDown)]


async def test_a_closed_connection_is_replaced_and_the_book_is_right_again(
    nursery: trio.Nursery, bybit: BybitSimulator
) -> None:
    watching = await watch(nursery, bybit)
    await bybit.close_connections()
    await watching.down_and_back()
    await watching.settle()
    assert bybit.connections_total == 2
    assert watching.feed.stats.reconnects == 1
    assert watching.feed.stats.resyncs == 0


async def test_a_reset_connection_is_replaced_and_the_book_is_right_again(
    nursery: trio.Nursery, bybit: BybitSimulator
) -> None:
    watching = await watch(nursery, bybit)
    bybit.drop_connections()
    await watching.down_and_back()
    await watching.settle()
    assert bybit.connections_total == 2
    assert watching.feed.stats.reconnects == 1


@pytest.mark.parametrize("kind", [kind for kind in MALFORMED_KINDS if kind != "huge"])
async def test_malformed_messages_are_counted_and_never_reach_the_book(
    nursery: trio.Nursery, bybit: BybitSimulator, kind: str
) -> None:
    watching = await watch(nursery, bybit)
    await bybit.send_malformed(kind, "ETHBTC", count=2)
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: watching.feed.stats.malformed == 2)
    await trio.sleep(0.2)
    await watching.settle()
    stats = watching.feed.stats
    assert stats.resyncs == 0
    assert stats.reconnects == 0
    assert not [e for e in watching.events if isinstance(e, VenueDown)]


async def test_a_message_beyond_the_size_limit_costs_one_reconnect(
    nursery: trio.Nursery, bybit: BybitSimulator
) -> None:
    watching = await watch(nursery, bybit)
    await bybit.send_malformed("huge", "ETHBTC")
    await watching.down_and_back()
    await watching.settle()
    assert bybit.connections_total == 2
    assert watching.feed.stats.reconnects == 1


async def test_the_feed_pings_often_enough_to_outlive_the_ping_timeout(
    nursery: trio.Nursery,
) -> None:
    venue = BybitSimulator(Market(seed=22), seed=22, ping_timeout=0.6)
    await nursery.start(venue.serve)
    watching = await watch(nursery, venue, adapter=FastPings(SYMBOLS, DEPTH))
    await trio.sleep(2.0)  # more than three ping timeouts
    assert venue.ping_timeouts == 0
    assert venue.connections_total == 1
    await watching.settle()


async def test_unanswered_pings_make_the_feed_stale_and_reconnect(
    nursery: trio.Nursery, bybit: BybitSimulator
) -> None:
    watching = await watch(nursery, bybit, adapter=FastPings(SYMBOLS, DEPTH), liveness_timeout=0.6)
    bybit.freeze()  # a quiet book: only pongs would keep the connection alive
    bybit.ignore_heartbeats()
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: watching.feed.stats.stalls >= 1)
    bybit.ignore_heartbeats(False)
    bybit.unfreeze()
    await watching.down_and_back()
    assert bybit.connections_total >= 2
    assert bybit.heartbeats_ignored >= 1
    assert any("stale" in down.reason for down in watching.downs("ETHBTC"))
    await watching.settle()


async def test_a_refused_subscription_is_a_venue_error_and_the_feed_stays_up(
    nursery: trio.Nursery, bybit: BybitSimulator
) -> None:
    bybit.reject_subscriptions()
    feed, _receive = start_feed(nursery, BybitAdapter(SYMBOLS, DEPTH), bybit.url)
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: feed.stats.venue_errors == 1)
    assert feed.stats.state is FeedState.SUBSCRIBED
    assert bybit.subscriptions_rejected == 1


async def test_the_service_merges_bybit_with_another_venue(nursery: trio.Nursery) -> None:
    market = Market(seed=23)
    sims: dict[str, SimulatedVenue] = {
        "binance": BinanceSimulator(market, seed=23),
        "bybit": BybitSimulator(market, seed=23),
    }
    for sim in sims.values():
        await nursery.start(sim.serve)
    config = ServeConfig(
        port=0,
        symbols=SYMBOLS,
        venues=tuple(sims),
        venue_urls={name: sim.url for name, sim in sims.items()},
    )
    service: RunningService = await nursery.start(functools.partial(run_service, config))

    def both_live(summary: Summary) -> bool:
        return tuple(summary.live_exchanges) == ("binance", "bybit")

    await first_summary(service.port, "ETHBTC", both_live)
    for sim in sims.values():
        sim.freeze()

    def matches(summary: Summary) -> bool:
        books = {name: sim.book("ETHBTC") for name, sim in sims.items()}
        bids, asks = naive_merge({name: book for name, book in books.items() if book})
        return levels(summary.bids) == bids and levels(summary.asks) == asks

    summary = await first_summary(service.port, "ETHBTC", matches)
    assert "bybit" in {level.exchange for level in [*summary.bids, *summary.asks]}
