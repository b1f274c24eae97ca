"""`serve --venues` with all six venues against their simulators: the merged book is the
merge of what the six venues themselves hold, and is so again after continuity faults and
after random chaos on all six."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.simulator import SIMULATORS, Market, SimulatedVenue
from aggtrio.simulator.chaos import run_chaos
from aggtrio.simulator.delta import DeltaVenue
from aggtrio.simulator.faults import break_sequence

from .harness import (
    Level,
    ServerProcess,
    first_summary,
    levels,
    naive_merge,
    start_server,
    venue_url_args,
)

ALL_VENUES = ("binance", "bitstamp", "kraken", "coinbase", "okx", "bybit")
SYMBOLS = ("ETHBTC", "BTCUSDT")


@pytest.fixture
async def six_simulators(nursery: trio.Nursery) -> dict[str, SimulatedVenue]:
    market = Market(seed=6)
    sims = {name: SIMULATORS[name](market, seed=seed) for seed, name in enumerate(ALL_VENUES)}
    for sim in sims.values():
        await nursery.start(sim.serve)
    return sims


@pytest.fixture
async def six_server(
    nursery: trio.Nursery, six_simulators: dict[str, SimulatedVenue]
) -> AsyncIterator[ServerProcess]:
    args = ["--symbols", ",".join(SYMBOLS), "--venues", ",".join(ALL_VENUES)]
    proc = await start_server(nursery, [*args, *venue_url_args(six_simulators)])
    with trio.fail_after(15):
        for venue in ALL_VENUES:
            await proc.wait_for_line(f"{venue}: live")
    yield proc
    await proc.stop_and_check()


async def assert_merged_book_matches_the_venues(
    server: ServerProcess, sims: dict[str, SimulatedVenue]
) -> None:
    """Hold every venue still, then each symbol's summary must be the naive merge of the
    books the six venues last sent."""
    for sim in sims.values():
        sim.freeze()
    # Changes made just before the freeze may still be on their way (OKX batches its
    # pushes every 100 ms): compare once every venue has sent its final book.
    await trio.sleep(0.5)
    for symbol in SYMBOLS:
        books = {name: sim.book(symbol) for name, sim in sims.items()}
        assert all(book is not None for book in books.values()), books
        bids, asks = naive_merge(books)
        last: list[Summary] = []

        def is_merge(
            s: Summary,
            bids: list[Level] = bids,
            asks: list[Level] = asks,
            last: list[Summary] = last,
        ) -> bool:
            last[:] = [s]
            return levels(s.bids) == bids and levels(s.asks) == asks

        try:
            summary = await first_summary(server.port, symbol, is_merge)
        except trio.TooSlowError:
            # Say which venue's levels differ, not just that the book does.
            got_bids, got_asks = levels(last[0].bids), levels(last[0].asks)
            diff = {
                "missing": sorted(set(bids + asks) - set(got_bids + got_asks)),
                "unexpected": sorted(set(got_bids + got_asks) - set(bids + asks)),
                "live": list(last[0].live_exchanges),
            }
            raise AssertionError(
                f"{symbol}: merged book differs from the venues': {diff}"
            ) from None
        assert summary.spread == asks[0][1] - bids[0][1]
    for sim in sims.values():
        sim.unfreeze()


async def test_all_six_venues_merge_into_the_venues_own_books(
    six_server: ServerProcess, six_simulators: dict[str, SimulatedVenue]
) -> None:
    await trio.sleep(1.0)  # let the market move every venue's book a few times
    await assert_merged_book_matches_the_venues(six_server, six_simulators)
    # The merged top holds levels of several venues (one shared market, each venue's own noise).
    summary = await first_summary(six_server.port, "ETHBTC", lambda s: True)
    assert len({lvl.exchange for lvl in [*summary.bids, *summary.asks]}) >= 3


def is_live_on(venue: str, summary: Summary) -> bool:
    return venue in summary.live_exchanges


async def test_each_continuity_fault_resyncs_once_and_the_book_is_right_again(
    six_server: ServerProcess, six_simulators: dict[str, SimulatedVenue]
) -> None:
    delta_venues = {n: s for n, s in six_simulators.items() if isinstance(s, DeltaVenue)}
    assert set(delta_venues) == {"kraken", "coinbase", "okx", "bybit"}
    for name, sim in delta_venues.items():
        for kind in sim.supported_faults:
            seen = len(six_server.log)
            assert sim.inject(kind) == len(SYMBOLS), (name, kind)
            if (name, kind) == ("kraken", "duplicate"):
                # Kraken's levels are absolute and it has no sequence numbers: a repeated
                # update changes nothing, so its checksum still matches and nothing resyncs.
                await trio.sleep(0.5)
                assert not [line for line in six_server.log[seen:] if " resyncing " in line]
                continue
            # Noticed and logged: one line per symbol resynced (Coinbase's sequence is
            # per connection, so it resyncs by reconnecting: one line for the lot), ...
            with trio.fail_after(10):
                await six_server.wait_for_line(f"{name}: resyncing ", seen)
            # ... and the venue is back in every symbol's book before the next fault.
            for symbol in SYMBOLS:
                await first_summary(six_server.port, symbol, partial(is_live_on, name))
            await trio.sleep(0.3)  # any late or repeated resync would show by now
            resyncs = [line for line in six_server.log[seen:] if " resyncing " in line]
            assert 1 <= len(resyncs) <= len(SYMBOLS), (kind, resyncs)
            assert all(f"{name}: resyncing " in line for line in resyncs), resyncs
    await assert_merged_book_matches_the_venues(six_server, six_simulators)
    assert six_server.problems() == []


async def test_after_chaos_on_all_six_venues_the_book_is_right_again(
    nursery: trio.Nursery, six_simulators: dict[str, SimulatedVenue]
) -> None:
    """Random faults on all six venues for a few seconds (outages, drops, closes, stalls,
    mutes, unanswered heartbeats, rejected subscriptions, garbage, malformed and huge
    messages, reconnect notices where a venue has them, broken sequences on the delta
    venues); once healed, every venue is back and the merged book is theirs again."""
    # A short liveness timeout, as in the soak test: a connection whose subscription was
    # rejected stays open and quiet, and only going stale gets it replaced.
    args = ["--symbols", ",".join(SYMBOLS), "--venues", ",".join(ALL_VENUES)]
    args += ["--liveness-timeout", "2", *venue_url_args(six_simulators)]
    server = await start_server(nursery, args)
    with trio.fail_after(15):
        for venue in ALL_VENUES:
            await server.wait_for_line(f"{venue}: live")
    async with trio.open_nursery() as chaos:
        run = partial(
            run_chaos, six_simulators, random.Random(6), 0.2, heal_after=(0.3, 1.0), count=24
        )
        injections = await chaos.start(run)
        # Chaos breaks a delta venue's sequence only now and then: break each one's once
        # mid-run, whatever else is going on.
        await trio.sleep(1.5)
        for sim in six_simulators.values():
            if isinstance(sim, DeltaVenue):
                await break_sequence(sim)
    # run_chaos healed all it injected; make sure of the rest, as the soak test does.
    for sim in six_simulators.values():
        sim.reset_faults()
    for symbol in SYMBOLS:
        await first_summary(
            server.port, symbol, lambda s: set(s.live_exchanges) == set(ALL_VENUES), 12
        )
    await assert_merged_book_matches_the_venues(server, six_simulators)
    await server.stop_and_check()
    # The run meant something: most venues were hit, with many kinds of fault.
    assert len({i.venue for i in injections}) >= 5, injections
    assert len({re.split("[:=]", i.fault)[0] for i in injections}) >= 6, injections
