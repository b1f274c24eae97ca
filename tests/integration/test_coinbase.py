"""The feed driving the Coinbase adapter against the Coinbase simulator over real WebSockets:
the published book is the venue's, continuity breaks resync once, the venue closing the
connection and malformed messages are survived."""

from __future__ import annotations

import pytest
import trio

from aggtrio.feed import Backoff, Feed, FeedState
from aggtrio.model import BookEvent, VenueBook, VenueDown
from aggtrio.simulator.coinbase import CoinbaseSimulator
from aggtrio.simulator.market import Market
from aggtrio.simulator.venue import MALFORMED_KINDS
from aggtrio.venues.coinbase import CoinbaseAdapter

from .feeds import start_feed, wait_until

SYMBOLS = ("ETHBTC", "BTCUSDT")
DEPTH = 10
TIMEOUT = 5.0


class Books:
    """Every event the feed sent, and the last book per symbol."""

    def __init__(self) -> None:
        self.events: list[BookEvent] = []
        self.last: dict[str, VenueBook] = {}

    async def collect(self, receive: trio.MemoryReceiveChannel[BookEvent]) -> None:
        async for event in receive:
            self.events.append(event)
            if isinstance(event, VenueBook):
                self.last[event.symbol] = event
            elif isinstance(event, VenueDown):
                for symbol in event.symbols:
                    self.last.pop(symbol, None)

    def matches(self, venue: CoinbaseSimulator, symbol: str) -> bool:
        """The feed's book for `symbol` is the top of what the venue last sent."""
        ours, theirs = self.last.get(symbol), venue.book(symbol)
        return (
            ours is not None
            and theirs is not None
            and ours.bids == theirs.bids[:DEPTH]
            and ours.asks == theirs.asks[:DEPTH]
        )

    async def wait_in_sync(self, venue: CoinbaseSimulator) -> None:
        """Freeze the venue and wait until the feed holds exactly its books; then thaw."""
        venue.freeze()
        with trio.fail_after(TIMEOUT):
            await wait_until(lambda: all(self.matches(venue, s) for s in SYMBOLS))
        venue.unfreeze()

    def since(self, index: int) -> list[BookEvent]:
        return self.events[index:]


@pytest.fixture
async def coinbase(nursery: trio.Nursery) -> CoinbaseSimulator:
    # A book 200 levels deep, moving often, so a top level deleted is refilled from below.
    venue = CoinbaseSimulator(
        Market(seed=31), seed=31, depth=200, updates_per_second=60.0, heartbeat_interval=0.1
    )
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


async def run_feed(
    nursery: trio.Nursery, venue: CoinbaseSimulator, **options: object
) -> tuple[Feed, Books]:
    # Quick retries: a resync is a reconnect, and several may come within seconds.
    feed, receive = start_feed(
        nursery,
        CoinbaseAdapter(SYMBOLS, DEPTH),
        venue.url,
        backoff=Backoff(initial=0.05, maximum=0.2),
        **options,
    )
    books = Books()
    nursery.start_soon(books.collect, receive)
    await books.wait_in_sync(venue)
    return feed, books


async def test_the_feed_holds_the_venues_book_for_two_symbols(
    nursery: trio.Nursery, coinbase: CoinbaseSimulator
) -> None:
    feed, books = await run_feed(nursery, coinbase)
    # And again after the books moved on for a while (many updates, deletions, refills).
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: coinbase.data_messages_sent > 150)
    await books.wait_in_sync(coinbase)
    assert feed.stats.state is FeedState.LIVE
    assert feed.stats.resyncs == feed.stats.malformed == feed.stats.reconnects == 0
    assert not [e for e in books.events if isinstance(e, VenueDown)]


@pytest.mark.parametrize("fault", ["gap", "duplicate", "reorder"])
async def test_an_injected_fault_is_one_resync_then_the_venues_book_again(
    nursery: trio.Nursery, coinbase: CoinbaseSimulator, fault: str
) -> None:
    feed, books = await run_feed(nursery, coinbase)
    mark = len(books.events)
    assert coinbase.inject(fault, "ETHBTC") == 1
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: feed.stats.resyncs >= 1)
        # Resynced on a fresh connection (the sequence is the connection's); the book may
        # look in sync before that one is even open, so wait for it first.
        await wait_until(lambda: coinbase.connections_total == 2 and coinbase.connections == 1)
    await books.wait_in_sync(coinbase)
    assert feed.stats.resyncs == 1
    assert coinbase.connections_total == 2
    assert feed.stats.malformed == 0
    # Each symbol left the merged book at once, and came back with its new snapshot.
    events = books.since(mark)
    for symbol in SYMBOLS:
        down = [i for i, e in enumerate(events) if isinstance(e, VenueDown) and symbol in e.symbols]
        back = [i for i, e in enumerate(events) if isinstance(e, VenueBook) and e.symbol == symbol]
        assert len(down) == 1, events
        assert back
        assert back[-1] > down[0]
    assert feed.stats.state is FeedState.LIVE


async def test_the_venue_closing_the_connection_is_a_reconnect_to_the_right_book(
    nursery: trio.Nursery, coinbase: CoinbaseSimulator
) -> None:
    feed, books = await run_feed(nursery, coinbase)
    await coinbase.close_connections()
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: coinbase.connections_total == 2 and coinbase.connections == 1)
    await books.wait_in_sync(coinbase)
    assert feed.stats.reconnects == 1
    assert feed.stats.resyncs == 0
    assert {s for e in books.events if isinstance(e, VenueDown) for s in e.symbols} == set(SYMBOLS)


async def test_a_dropped_connection_is_a_reconnect_to_the_right_book(
    nursery: trio.Nursery, coinbase: CoinbaseSimulator
) -> None:
    feed, books = await run_feed(nursery, coinbase)
    coinbase.drop_connections()
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: coinbase.connections_total == 2)
    await books.wait_in_sync(coinbase)
    assert feed.stats.reconnects == 1


async def test_malformed_messages_are_counted_and_the_feed_goes_on(
    nursery: trio.Nursery, coinbase: CoinbaseSimulator
) -> None:
    feed, books = await run_feed(nursery, coinbase)
    kinds = [kind for kind in MALFORMED_KINDS if kind != "huge"]
    for count, kind in enumerate(kinds, start=1):
        await coinbase.send_malformed(kind, "ETHBTC")
        with trio.fail_after(TIMEOUT):
            await wait_until(lambda count=count: feed.stats.malformed == count)  # type: ignore[misc]
    assert feed.stats.crossed == 1
    await books.wait_in_sync(coinbase)
    # None of them reached the book, none broke continuity, the connection is the same.
    assert feed.stats.resyncs == 0
    assert feed.stats.reconnects == 0
    assert not [e for e in books.events if isinstance(e, VenueDown)]


async def test_heartbeats_keep_a_quiet_venue_live(
    nursery: trio.Nursery, coinbase: CoinbaseSimulator
) -> None:
    feed, _books = await run_feed(nursery, coinbase, liveness_timeout=0.5)
    coinbase.mute()  # no book changes at all: only heartbeats arrive
    await trio.sleep(1.5)  # three liveness timeouts of book silence
    assert feed.stats.state is FeedState.LIVE
    assert feed.stats.stalls == 0
    assert coinbase.connections_total == 1


async def test_a_stalled_venue_is_stale_and_replaced(
    nursery: trio.Nursery, coinbase: CoinbaseSimulator
) -> None:
    feed, books = await run_feed(nursery, coinbase, liveness_timeout=0.5)
    coinbase.stall()
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: feed.stats.stalls == 1)
    coinbase.unstall()
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: coinbase.connections_total >= 2)
    await books.wait_in_sync(coinbase)


async def test_a_huge_message_is_refused_and_the_feed_reconnects(
    nursery: trio.Nursery, coinbase: CoinbaseSimulator
) -> None:
    feed, books = await run_feed(nursery, coinbase)
    await coinbase.send_malformed("huge", "ETHBTC")
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: coinbase.connections_total == 2)
    await books.wait_in_sync(coinbase)
    assert feed.stats.reconnects == 1
    assert feed.stats.resyncs == 0
