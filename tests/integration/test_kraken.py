"""The feed with the Kraken adapter against the Kraken simulator, over real WebSockets.

The feed's published book must be exactly what the simulator last sent, through thousands
of checksummed updates, every continuity fault the simulator can inject, venue notices,
server-side disconnects and malformed messages.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio

from aggtrio.feed import Backoff, Feed, FeedState
from aggtrio.model import BookEvent, VenueBook, VenueDown
from aggtrio.simulator import Market, SimulatedVenue, run_chaos
from aggtrio.simulator.kraken import KrakenSession, KrakenSimulator
from aggtrio.simulator.venue import MALFORMED_KINDS
from aggtrio.venues.kraken import KrakenAdapter

from .feeds import start_feed

SYMBOLS = ("ETHBTC", "BTCUSDT")
TIMEOUT = 10.0  # an upper bound only: generous for a loaded CI box

# A pinned ETH/BTC book (12 levels a side; the subscription shows 10) and two later states
# that differ from it, and from each other, in different levels.
BIDS_A = [(f"0.0{3500 - i}000", f"{1 + i}.50000000") for i in range(12)]
ASKS_A = [(f"0.0{3501 + i}000", f"{2 + i}.25000000") for i in range(12)]
BIDS_B = [(BIDS_A[0][0], "9.00000000"), *BIDS_A[1:]]  # the best bid's qty changes
ASKS_C = [*ASKS_A[:2], (ASKS_A[2][0], "0.12500000"), *ASKS_A[3:]]  # the third ask's


@attrs.define
class Published:
    """What the feed has sent: the latest book per symbol, and every event in order."""

    books: dict[str, VenueBook] = attrs.field(factory=dict)
    events: list[BookEvent] = attrs.field(factory=list)

    async def collect(self, receive: trio.MemoryReceiveChannel[BookEvent]) -> None:
        async for event in receive:
            self.events.append(event)
            if isinstance(event, VenueBook):
                self.books[event.symbol] = event

    def matches(self, venue: SimulatedVenue, symbol: str) -> bool:
        """The feed's book for `symbol` is exactly the venue's last sent book."""
        book, sent = self.books.get(symbol), venue.book(symbol)
        return (
            book is not None
            and sent is not None
            and (book.bids, book.asks)
            == (
                sent.bids,
                sent.asks,
            )
        )

    def downs(self, symbol: str) -> list[VenueDown]:
        return [e for e in self.events if isinstance(e, VenueDown) and symbol in e.symbols]


async def until(condition: Callable[[], bool], seconds: float = TIMEOUT) -> None:
    """Wait for a condition on state other tasks own (the feed's, the venue's)."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 - polling state other tasks own
            await trio.sleep(0.01)


async def start(
    nursery: trio.Nursery,
    venue: KrakenSimulator,
    symbols: tuple[str, ...] = SYMBOLS,
    **options: Any,
) -> tuple[Feed, Published]:
    await nursery.start(venue.serve)
    feed, receive = start_feed(nursery, KrakenAdapter(symbols, 10), venue.url, **options)
    published = Published()
    nursery.start_soon(published.collect, receive)
    return feed, published


async def settled(venue: KrakenSimulator, published: Published, *symbols: str) -> None:
    """Freeze the market and wait until the feed shows each symbol as the venue sent it."""
    venue.freeze()
    await until(lambda: all(published.matches(venue, s) for s in symbols or SYMBOLS))


def malformed_is(feed: Feed, count: int) -> bool:
    return feed.stats.malformed == count


def sent_third_ask(venue: KrakenSimulator) -> tuple[float, float] | None:
    book = venue.book("ETHBTC")
    return None if book is None else book.asks[2]


def fault_pending(venue: KrakenSimulator) -> bool:
    return any(
        isinstance(client.session, KrakenSession) and client.session.pending_faults
        for client in venue.open_clients()
    )


async def test_the_feed_book_is_the_venue_book_through_many_updates(
    nursery: trio.Nursery,
) -> None:
    venue = KrakenSimulator(Market(seed=21), seed=21, updates_per_second=200.0)
    feed, published = await start(nursery, venue)
    await until(lambda: venue.data_messages_sent >= 300)
    await settled(venue, published)
    # Every update's checksum was checked, the book cut to depth and refilled, no break.
    assert feed.stats.resyncs == 0
    assert feed.stats.malformed == 0
    assert feed.stats.venue_errors == 0
    assert feed.stats.state is FeedState.LIVE
    assert sum(isinstance(e, VenueBook) for e in published.events) >= 100


async def test_numbers_printed_without_trailing_zeros_still_check_out(
    nursery: trio.Nursery,
) -> None:
    venue = KrakenSimulator(Market(seed=22), seed=22, updates_per_second=200.0, trim_zeros=True)
    feed, published = await start(nursery, venue)
    await until(lambda: venue.data_messages_sent >= 300)
    await settled(venue, published)
    assert feed.stats.resyncs == 0
    assert feed.stats.malformed == 0


async def pinned_feed(nursery: trio.Nursery) -> tuple[KrakenSimulator, Feed, Published]:
    venue = KrakenSimulator(Market(seed=23), seed=23)
    venue.freeze()
    venue.set_book("ETHBTC", BIDS_A, ASKS_A)
    feed, published = await start(nursery, venue)
    await settled(venue, published)
    return venue, feed, published


@pytest.mark.parametrize("kind", ["gap", "reorder", "bad-checksum"])
async def test_a_continuity_fault_is_one_resync_then_the_venue_book_again(
    nursery: trio.Nursery, kind: str
) -> None:
    venue, feed, published = await pinned_feed(nursery)
    assert venue.inject(kind, "ETHBTC") == 1
    venue.set_book("ETHBTC", BIDS_B, ASKS_A)  # this update is dropped, held back or spoiled
    await until(lambda: not fault_pending(venue))
    venue.set_book("ETHBTC", BIDS_B, ASKS_C)  # a gap or reorder shows in this one's checksum
    await until(lambda: feed.stats.resyncs == 1)
    await until(lambda: sent_third_ask(venue) == (0.03503, 0.125))
    await until(lambda: published.matches(venue, "ETHBTC"))
    # Reported down once, then back with the venue's book, fetched afresh on the same
    # connection (unsubscribe + subscribe).
    [down] = published.downs("ETHBTC")
    assert down.symbols == ("ETHBTC",)
    assert "resync" in down.reason
    after = published.events[published.events.index(down) + 1 :]
    assert any(isinstance(e, VenueBook) and e.symbol == "ETHBTC" for e in after)
    assert venue.subscribe_requests == 2
    assert venue.connections_total == 1
    assert feed.stats.resyncs == 1
    assert published.downs("BTCUSDT") == []
    assert published.matches(venue, "BTCUSDT")


async def test_a_duplicated_update_is_harmless_and_no_resync(nursery: trio.Nursery) -> None:
    venue, feed, published = await pinned_feed(nursery)
    sent = venue.data_messages_sent
    assert venue.inject("duplicate", "ETHBTC") == 1
    venue.set_book("ETHBTC", BIDS_B, ASKS_A)
    await until(lambda: venue.data_messages_sent == sent + 2)  # the update, twice
    venue.set_book("ETHBTC", BIDS_B, ASKS_C)
    await until(lambda: sent_third_ask(venue) == (0.03503, 0.125))
    await until(lambda: published.matches(venue, "ETHBTC"))
    assert published.books["ETHBTC"].bids[0] == (0.035, 9.0)
    assert feed.stats.resyncs == 0
    assert published.downs("ETHBTC") == []


@pytest.mark.parametrize("how", ["maintenance", "close", "drop"])
async def test_a_venue_disconnect_is_followed_by_a_correct_book(
    nursery: trio.Nursery, how: str
) -> None:
    venue = KrakenSimulator(Market(seed=24), seed=24, updates_per_second=100.0)
    feed, published = await start(nursery, venue)
    await settled(venue, published)
    if how == "maintenance":
        await venue.announce_maintenance(grace=0.2)
        await until(lambda: feed.stats.venue_errors == 1)  # the status notice
    elif how == "close":
        await venue.close_connections()
    else:
        venue.drop_connections()
    await until(lambda: venue.connections_total == 2 and venue.connections == 1)
    venue.unfreeze()
    await until(lambda: venue.data_messages_sent >= 100)
    await settled(venue, published)
    assert feed.stats.reconnects == 1
    assert feed.stats.resyncs == 0
    assert feed.stats.state is FeedState.LIVE
    assert set(published.downs("ETHBTC")[0].symbols) == set(SYMBOLS)


async def test_malformed_messages_are_counted_and_the_feed_goes_on(
    nursery: trio.Nursery,
) -> None:
    venue = KrakenSimulator(Market(seed=25), seed=25, updates_per_second=100.0)
    feed, published = await start(nursery, venue)
    await settled(venue, published)
    kinds = [kind for kind in MALFORMED_KINDS if kind != "huge"]
    for expected, kind in enumerate(kinds, start=1):
        await venue.send_malformed(kind, "ETHBTC")
        await until(functools.partial(malformed_is, feed, expected))
    assert feed.stats.crossed == 1
    venue.unfreeze()
    await until(lambda: venue.data_messages_sent >= 100)
    await settled(venue, published)
    assert feed.stats.resyncs == 0
    assert feed.stats.reconnects == 0
    assert published.downs("ETHBTC") == []


async def test_a_rejected_subscription_is_a_venue_error_and_no_book(
    nursery: trio.Nursery,
) -> None:
    venue = KrakenSimulator(Market(seed=26), seed=26)
    venue.reject_subscriptions()
    feed, published = await start(nursery, venue, ("ETHBTC",))
    await until(lambda: feed.stats.venue_errors == 1)
    assert venue.subscriptions_rejected == 1
    assert published.books == {}
    assert feed.stats.state is FeedState.SUBSCRIBED


async def test_after_chaos_the_feed_book_is_the_venue_book_again(nursery: trio.Nursery) -> None:
    venue = KrakenSimulator(Market(seed=27), seed=27, updates_per_second=100.0)
    venue.close_timeout = 0.5
    fast = Backoff(initial=0.05, maximum=0.2, stable_after=1.0)
    feed, published = await start(nursery, venue, backoff=fast, liveness_timeout=1.0)
    await settled(venue, published)
    venue.unfreeze()
    log = await run_chaos([venue], random.Random(8), 0.05, heal_after=(0.05, 0.2), count=25)
    assert len(log) == 25
    await until(lambda: venue.data_messages_sent >= 100)
    await settled(venue, published)
    assert feed.stats.state is FeedState.LIVE


async def test_a_huge_message_costs_a_reconnect_and_nothing_more(nursery: trio.Nursery) -> None:
    venue = KrakenSimulator(Market(seed=28), seed=28, updates_per_second=100.0)
    feed, published = await start(nursery, venue)
    await settled(venue, published)
    await venue.send_malformed("huge", "ETHBTC")  # beyond the feed's 4 MiB message limit
    # Building the 8 MiB message takes a while on a busy machine.
    await until(lambda: venue.connections_total == 2 and venue.connections == 1, 30.0)
    venue.unfreeze()
    await until(lambda: venue.data_messages_sent >= 100)
    await settled(venue, published)
    assert feed.stats.reconnects == 1
    assert feed.stats.resyncs == 0
