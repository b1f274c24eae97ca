"""Fault injection: every venue fault against the real service, over real sockets.

The service runs in the test's own trio loop (so its feeds' counters can be read) against
the simulators, and a real gRPC client watches the merged book. Each test makes one venue
misbehave and checks what users rely on: the venue leaves the book at once (never a stale
book), the rest of the book stays right, and the venue comes back when it heals.
"""

from __future__ import annotations

import functools
import itertools
import math
import random

import pytest
import trio

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.app import RunningService, run_service
from aggtrio.config import ServeConfig
from aggtrio.feed import Backoff, Feed, FeedState
from aggtrio.model import VenueDown
from aggtrio.simulator import BinanceSimulator, BitstampSimulator, Market, SimulatedVenue
from aggtrio.simulator.venue import MALFORMED_KINDS
from aggtrio.venues.binance import BinanceAdapter

from .feeds import FastHeartbeat, next_event, start_feed, wait_until
from .harness import first_summary, levels, naive_merge, purerpc_stream

SYMBOLS = ("ETHBTC", "BTCUSDT")
VENUES = ("binance", "bitstamp")


async def start_service(
    nursery: trio.Nursery,
    sims: dict[str, SimulatedVenue],
    *,
    liveness_timeout: float | None = None,
    wait_all_live: bool = False,
) -> RunningService:
    """The service against `sims`; with `wait_all_live`, once every venue carries every
    symbol."""
    config = ServeConfig(
        port=0,
        symbols=SYMBOLS,
        venue_urls={name: sim.url for name, sim in sims.items()},
        liveness_timeout=liveness_timeout,
    )
    service: RunningService = await nursery.start(functools.partial(run_service, config))
    if wait_all_live:
        for symbol in SYMBOLS:
            await all_live(service, symbol)
    return service


async def all_live(service: RunningService, symbol: str = "ETHBTC", within: float = 10) -> Summary:
    return await first_summary(
        service.port, symbol, lambda s: tuple(s.live_exchanges) == VENUES, within=within
    )


def feed(service: RunningService, venue: str) -> Feed:
    return next(f for f in service.feeds if f.venue == venue)


def matches_the_simulators(summary: Summary, sims: dict[str, SimulatedVenue], symbol: str) -> bool:
    books = {name: sim.book(symbol) for name, sim in sims.items()}
    bids, asks = naive_merge({name: book for name, book in books.items() if book is not None})
    return levels(summary.bids) == bids and levels(summary.asks) == asks


# --- drop, refuse, backoff -------------------------------------------------------------


@pytest.mark.parametrize("venue", VENUES)
async def test_a_dropped_venue_leaves_the_book_within_1s_and_comes_back_on_every_symbol(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue], venue: str
) -> None:
    service = await start_service(nursery, simulators, wait_all_live=True)
    sim = simulators[venue]
    subscribed = sim.subscribe_requests
    dropped_at = trio.current_time()
    sim.drop_connections()  # TCP reset, no close frame
    gone = await first_summary(
        service.port, "ETHBTC", lambda s: venue not in s.live_exchanges, within=1.0
    )
    assert trio.current_time() - dropped_at < 1.0
    assert venue not in {lvl.exchange for lvl in [*gone.bids, *gone.asks]}
    for symbol in SYMBOLS:  # resubscribed every symbol on the new connection
        back = await all_live(service, symbol, within=5)
        assert {lvl.exchange for lvl in [*back.bids, *back.asks]} <= set(VENUES)
    assert sim.connections_total == 2
    if venue == "bitstamp":  # Binance subscribes through the URL; Bitstamp by message
        assert sim.subscribe_requests == subscribed + len(SYMBOLS)


async def test_a_refusing_venue_is_retried_with_capped_jittered_exponential_backoff(
    nursery: trio.Nursery,
) -> None:
    venue = BinanceSimulator(Market(seed=6), seed=6)
    await nursery.start(venue.serve)
    venue.refuse()
    backoff = Backoff(initial=0.2, maximum=0.8, stable_after=30)
    rng = random.Random(1)
    feed, _receive = start_feed(
        nursery, BinanceAdapter(["ETHBTC"], 10), venue.url, backoff=backoff, rng=rng
    )
    await trio.sleep(4.0)
    attempts = venue.connection_attempts_at
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Delays: 0, then equal jitter within [c/2, c] for ceilings 0.2, 0.4, 0.8, 0.8, ...
    # (a few ms of connect time on top). In 4 s that is 8 attempts if every delay is at its
    # ceiling (0, 0, .2, .6, 1.4, 2.2, 3.0, 3.8) and 13 at the floor; a tight loop would
    # make thousands.
    ceilings = [0.0] + [min(0.8, 0.2 * 2**k) for k in range(len(gaps) - 1)]
    assert 8 <= len(attempts) <= 13
    assert venue.connections_refused == len(attempts)
    for gap, ceiling in zip(gaps, ceilings, strict=True):
        assert ceiling / 2 - 0.01 <= gap <= ceiling + 0.15, (gaps, ceilings)
    assert feed.stats.reconnects == len(attempts) - 1
    assert feed.stats.state is not FeedState.LIVE


async def test_backoff_resets_after_a_stable_connection(nursery: trio.Nursery) -> None:
    venue = BinanceSimulator(Market(seed=8), seed=8)
    await nursery.start(venue.serve)
    venue.refuse()
    backoff = Backoff(initial=0.8, maximum=0.8, stable_after=1.0)
    feed, receive = start_feed(nursery, BinanceAdapter(["ETHBTC"], 10), venue.url, backoff=backoff)
    with trio.fail_after(5):
        await wait_until(lambda: venue.connections_refused >= 3)  # backing off 0.4-0.8 s now
    venue.refuse(False)
    with trio.fail_after(5):
        await wait_until(lambda: feed.stats.state is FeedState.LIVE)
    await trio.sleep(1.2)  # stable for longer than stable_after
    before = len(venue.connection_attempts_at)
    dropped_at = trio.current_time()
    venue.drop_connections()
    with trio.fail_after(2):
        await wait_until(lambda: len(venue.connection_attempts_at) > before)
    # Without the reset this retry would wait at least 0.4 s.
    assert venue.connection_attempts_at[before] - dropped_at < 0.2
    receive.close()


# --- stalls ----------------------------------------------------------------------------


async def test_a_venue_that_never_answers_the_handshake_costs_one_connect_timeout(
    nursery: trio.Nursery,
) -> None:
    venue = BinanceSimulator(Market(seed=11), seed=11)
    await nursery.start(venue.serve)
    venue.stall()  # TCP accepted, handshake never answered
    backoff = Backoff(initial=0.1, maximum=0.1)
    feed, _receive = start_feed(
        nursery, BinanceAdapter(["ETHBTC"], 10), venue.url, backoff=backoff, connect_timeout=0.5
    )
    await trio.sleep(2.2)
    # Attempts 0.5 s (+ up to 0.1 s backoff) apart: trio-websocket's own opener would still
    # be waiting on the first one.
    assert 3 <= len(venue.connection_attempts_at) <= 5
    venue.unstall()
    with trio.fail_after(3):
        await wait_until(lambda: feed.stats.state is FeedState.LIVE)


@pytest.mark.parametrize("venue", VENUES)
async def test_a_stalled_venue_is_declared_stale_removed_and_replaced(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue], venue: str
) -> None:
    service = await start_service(nursery, simulators, liveness_timeout=0.5)
    await all_live(service)
    sim = simulators[venue]
    sim.stall()  # the socket stays open; nothing comes, pings and heartbeats go unanswered
    stalled_at = trio.current_time()
    await first_summary(service.port, "ETHBTC", lambda s: venue not in s.live_exchanges, within=2)
    # The timeout runs from the last message, which may precede the stall a little.
    assert 0.35 <= trio.current_time() - stalled_at < 1.5
    assert feed(service, venue).stats.stalls >= 1
    sim.unstall()
    await all_live(service, within=5)
    assert sim.connections_total >= 2


async def test_binance_data_stopping_is_stale_even_while_pings_are_answered(
    nursery: trio.Nursery,
) -> None:
    venue = BinanceSimulator(Market(seed=9), seed=9, ping_interval=0.1)
    await nursery.start(venue.serve)
    feed, receive = start_feed(
        nursery, BinanceAdapter(["ETHBTC"], 10), venue.url, liveness_timeout=0.6
    )
    with trio.fail_after(5):
        await wait_until(lambda: feed.stats.state is FeedState.LIVE)
    venue.mute()  # the 100 ms pushes stop; WebSocket pings keep coming and being answered
    muted_at = trio.current_time()
    with trio.fail_after(3):
        event = await next_event(receive, VenueDown)
    # The timeout runs from the last push, up to 100 ms before the mute.
    assert 0.45 <= trio.current_time() - muted_at < 1.2
    assert "stale" in event.reason
    assert feed.stats.stalls == 1


async def test_bitstamp_without_data_or_heartbeat_replies_is_stale(nursery: trio.Nursery) -> None:
    venue = BitstampSimulator(Market(seed=10), seed=10)
    await nursery.start(venue.serve)
    feed, receive = start_feed(
        nursery, FastHeartbeat(["ETHBTC"], 10), venue.url, liveness_timeout=0.6
    )
    with trio.fail_after(5):
        await wait_until(lambda: feed.stats.state is FeedState.LIVE)
    venue.mute()  # quiet book, heartbeats still answered: healthy
    await trio.sleep(1.5)
    assert feed.stats.stalls == 0
    assert feed.stats.state is FeedState.LIVE
    venue.ignore_heartbeats()  # now nothing at all arrives
    with trio.fail_after(3):
        await next_event(receive, VenueDown)
    assert feed.stats.stalls == 1


# --- bad data --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in MALFORMED_KINDS if k != "huge"])
@pytest.mark.parametrize("venue", VENUES)
async def test_malformed_messages_are_counted_and_never_reach_the_book(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue], venue: str, kind: str
) -> None:
    service = await start_service(nursery, simulators)
    await all_live(service)
    for sim in simulators.values():
        sim.freeze()  # books stop moving, so the merged book must stay exactly theirs
    sim = simulators[venue]
    stats = feed(service, venue).stats
    before = stats.malformed
    await sim.send_malformed(kind, "ETHBTC", count=3)
    with trio.fail_after(2):
        await wait_until(lambda: stats.malformed >= before + 3)
    assert stats.state is FeedState.LIVE
    assert stats.garbage_recycles == 0
    if kind == "crossed":
        assert stats.crossed >= 3
    summary = await first_summary(service.port, "ETHBTC", lambda s: True)
    assert tuple(summary.live_exchanges) == VENUES
    assert matches_the_simulators(summary, simulators, "ETHBTC")


async def test_an_absurdly_large_message_costs_one_reconnect(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    service = await start_service(nursery, simulators)
    await all_live(service)
    await simulators["bitstamp"].send_malformed("huge", "ETHBTC")
    with trio.fail_after(5):
        await wait_until(lambda: simulators["bitstamp"].connections_total >= 2)
    await all_live(service, within=5)
    assert feed(service, "binance").stats.reconnects == 0


async def test_a_venue_that_keeps_sending_garbage_gets_a_fresh_connection(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    service = await start_service(nursery, simulators)
    await all_live(service)
    sim = simulators["binance"]
    sim.garbage_rate(1.0)
    stats = feed(service, "binance").stats
    with trio.fail_after(10):
        await wait_until(lambda: stats.garbage_recycles >= 1)
        await wait_until(lambda: sim.connections_total >= 2)  # a fresh connection
    assert stats.stalls == 0
    sim.garbage_rate(0.0)
    await all_live(service, within=10)


async def test_a_rejected_subscription_keeps_the_venue_out_and_the_service_up(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    sim = simulators["bitstamp"]
    sim.reject_subscriptions()
    service = await start_service(nursery, simulators)
    stats = feed(service, "bitstamp").stats
    with trio.fail_after(5):
        await wait_until(lambda: stats.venue_errors >= len(SYMBOLS))
    summary = await first_summary(service.port, "ETHBTC", lambda s: bool(s.live_exchanges))
    assert tuple(summary.live_exchanges) == ("binance",)
    sim.reject_subscriptions(False)
    sim.drop_connections()
    await all_live(service, within=5)


async def test_a_cross_between_venues_is_a_negative_spread_not_an_error(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    service = await start_service(nursery, simulators)
    await all_live(service)
    simulators["binance"].set_book("ETHBTC", [("0.0600", "1.0")], [("0.0700", "1.0")])
    simulators["bitstamp"].set_book("ETHBTC", [("0.0500", "1.0")], [("0.0550", "2.0")])
    summary = await first_summary(
        service.port, "ETHBTC", lambda s: bool(s.bids) and s.bids[0].price == 0.06
    )
    assert math.isclose(summary.spread, 0.055 - 0.06)
    assert tuple(summary.live_exchanges) == VENUES
    assert all(f.stats.crossed == 0 for f in service.feeds)


# --- orderly reconnects ----------------------------------------------------------------


@pytest.mark.parametrize("venue", VENUES)
async def test_an_orderly_reconnect_never_takes_the_venue_out_of_the_book(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue], venue: str
) -> None:
    service = await start_service(nursery, simulators, wait_all_live=True)
    sim = simulators[venue]
    missing: list[Summary] = []

    async def watch() -> None:
        async def check(summary: Summary) -> bool:
            if venue not in summary.live_exchanges:
                missing.append(summary)
            return False

        await purerpc_stream(service.port, "ETHBTC", check)

    async with trio.open_nursery() as watching:
        watching.start_soon(watch)
        await trio.sleep(0.3)
        if isinstance(sim, BinanceSimulator):
            await sim.request_shutdown(grace=5.0)
        else:
            assert isinstance(sim, BitstampSimulator)
            await sim.request_reconnect(grace=5.0)
        with trio.fail_after(4):  # handed over well before the venue's grace ends
            await wait_until(lambda: sim.connections == 1 and sim.connections_total == 2)
        await trio.sleep(0.3)
        watching.cancel_scope.cancel()
    assert missing == []
    assert feed(service, venue).stats.handovers == 1
    for symbol in SYMBOLS:
        assert venue in (await first_summary(service.port, symbol, lambda s: True)).live_exchanges
