"""Soak: random faults on both venues for half a minute while 20 clients watch.

The simulators run here under `run_chaos` (outages, drops, clean closes, stalls, mutes,
unanswered heartbeats, rejected subscriptions, garbage, malformed and oversized messages,
reconnect notices); `aggtrio serve` runs as a real process. At the end every fault is
healed, the books are frozen, and the merged book must equal what the simulators last
sent, on fresh streams and on the 20 that lived through it all; the server must still be
running with no error logged, and its memory must not have grown.
"""

from __future__ import annotations

import collections
import functools
import random
import re

import attrs
import trio

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.simulator import SimulatedVenue
from aggtrio.simulator.chaos import run_chaos

from .harness import (
    first_summary,
    levels,
    naive_merge,
    purerpc_stream,
    running_server,
    venue_url_args,
)

SYMBOLS = ("ETHBTC", "BTCUSDT")
VENUES = ("binance", "bitstamp")
CLIENTS = 20
CHAOS_SECONDS = 30.0
WARM_UP = 5.0


@attrs.define
class Watcher:
    """One long-lived client stream: how many summaries it got, and the latest."""

    symbol: str
    received: int = 0
    latest: Summary | None = None
    ended: bool = False

    async def run(self, port: int) -> None:
        async def take(summary: Summary) -> bool:
            self.received += 1
            self.latest = summary
            return False

        # The default stream (BookSummary) is ETHBTC, the first configured symbol.
        await purerpc_stream(port, None if self.symbol == "ETHBTC" else self.symbol, take)
        self.ended = True


def expected(sims: dict[str, SimulatedVenue], symbol: str) -> tuple[list[object], list[object]]:
    books = {name: sim.book(symbol) for name, sim in sims.items()}
    bids, asks = naive_merge({name: book for name, book in books.items() if book is not None})
    return list(bids), list(asks)


def as_book(summary: Summary) -> tuple[list[object], list[object]]:
    return list(levels(summary.bids)), list(levels(summary.asks))


async def test_soak_with_random_faults_on_both_venues(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    args = [
        "--symbols",
        ",".join(SYMBOLS),
        "--liveness-timeout",
        "2",
        *venue_url_args(simulators),
    ]
    async with running_server(nursery, args) as server:
        watchers = [Watcher(SYMBOLS[i % 2]) for i in range(CLIENTS)]
        async with trio.open_nursery() as clients:
            for watcher in watchers:
                clients.start_soon(watcher.run, server.port)
            for symbol in SYMBOLS:
                await first_summary(
                    server.port, symbol, lambda s: tuple(s.live_exchanges) == VENUES
                )
            await trio.sleep(WARM_UP)
            rss_before = server.rss_kib()

            async with trio.open_nursery() as chaos:
                chaos_run = functools.partial(
                    run_chaos, simulators, random.Random(2026), 1.0, heal_after=(1.0, 4.0)
                )
                injections = await chaos.start(chaos_run)
                await trio.sleep(CHAOS_SECONDS)
                chaos.cancel_scope.cancel()
            # Leaving run_chaos healed whatever it had injected; make sure of the rest.
            for sim in simulators.values():
                sim.reset_faults()
            for symbol in SYMBOLS:  # every venue back for every symbol (backoff < 10 s)
                await first_summary(
                    server.port, symbol, lambda s: tuple(s.live_exchanges) == VENUES, within=20
                )
            rss_after = server.rss_kib()

            for sim in simulators.values():
                sim.freeze()  # Binance still pushes every 100 ms; its book no longer moves
            await trio.sleep(1.0)  # the last changes reach every stream
            for symbol in SYMBOLS:
                fresh = await first_summary(server.port, symbol, lambda s: True)
                assert as_book(fresh) == expected(simulators, symbol), symbol
                assert tuple(fresh.live_exchanges) == VENUES
            for watcher in watchers:
                assert not watcher.ended
                assert watcher.latest is not None
                assert as_book(watcher.latest) == expected(simulators, watcher.symbol)
            clients.cancel_scope.cancel()

        faults = collections.Counter(re.split("[:=]", i.fault)[0] for i in injections)
        # Enough of the fault repertoire was exercised on both venues for the run to mean
        # something (22 injections of 8 kinds at this seed, measured).
        assert len(injections) >= 15, injections
        assert len(faults) >= 6, faults
        assert {i.venue for i in injections} == set(VENUES)
        assert min(w.received for w in watchers) > 50
        # Memory: the process is still settling at first (allocator arenas, caches); a
        # leak per message or per reconnect would show as megabytes here.
        assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
        # No feed task died: it would have ended the process (checked on exit) or logged.
        assert server.process.returncode is None
        assert not [line for line in server.log if "unexpected error" in line]
