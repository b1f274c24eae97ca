"""The gRPC handler's stream logic, driven directly (no sockets) on a virtual clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import cast

import purerpc
import pytest
import trio

from aggtrio._proto.orderbook_pb2 import Empty, SummaryRequest
from aggtrio.aggregator import PublishedSummary
from aggtrio.broadcast import Broadcast
from aggtrio.server import OrderbookService


def summary(arrival: int) -> PublishedSummary:
    return PublishedSummary("ETHBTC", (), (), float("nan"), arrival, (), b"payload %d" % arrival)


def service(**options: float) -> tuple[OrderbookService, dict[str, Broadcast[PublishedSummary]]]:
    broadcasts = {"ETHBTC": Broadcast[PublishedSummary](), "BTCUSDT": Broadcast[PublishedSummary]()}
    return OrderbookService(broadcasts, "ETHBTC", **options), broadcasts  # type: ignore[arg-type]


async def timed_next(stream: AsyncIterator[PublishedSummary]) -> tuple[float, PublishedSummary]:
    value = await anext(stream)
    return trio.current_time(), value


async def test_a_quiet_symbol_resends_the_latest_summary_every_interval(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    svc, broadcasts = service()
    nursery.start_soon(broadcasts["ETHBTC"].resend_when_quiet, 1.0)
    first = summary(1)
    broadcasts["ETHBTC"].publish(first)
    async with aclosing(svc.BookSummary(Empty())) as stream:
        start = trio.current_time()
        assert await timed_next(stream) == (start, first)
        # Nothing changes: the very same object (its encoded bytes shared) comes again,
        # once per interval measured from the previous publish.
        assert await timed_next(stream) == (start + 1.0, first)
        assert await timed_next(stream) == (start + 2.0, first)
        # A change goes out at once and restarts the interval.
        await trio.sleep(0.25)
        second = summary(2)
        broadcasts["ETHBTC"].publish(second)
        assert await timed_next(stream) == (start + 2.25, second)
        assert await timed_next(stream) == (start + 3.25, second)


async def test_nothing_is_sent_before_the_first_summary(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    svc, broadcasts = service()
    nursery.start_soon(broadcasts["ETHBTC"].resend_when_quiet, 1.0)
    first = summary(7)

    async def publish_later() -> None:
        await trio.sleep(5.5)
        broadcasts["ETHBTC"].publish(first)

    async with aclosing(svc.BookSummary(Empty())) as stream:
        start = trio.current_time()
        nursery.start_soon(publish_later)
        assert await timed_next(stream) == (start + 5.5, first)


async def test_slots_are_counted_over_both_rpcs_and_freed_when_a_stream_ends() -> None:
    svc, broadcasts = service(max_streams=2)
    for broadcast in broadcasts.values():
        broadcast.publish(summary(1))
    default = svc.BookSummary(Empty())
    await anext(default)
    btcusdt = svc.BookSummaryForSymbol(SummaryRequest(symbol="btc-usdt"))
    await anext(btcusdt)
    assert svc.open_streams == 2
    assert broadcasts["BTCUSDT"].subscribers == 1

    refused = svc.BookSummaryForSymbol(SummaryRequest(symbol="ETHBTC"))
    with pytest.raises(purerpc.ResourceExhaustedError, match="limit of 2 concurrent streams"):
        await anext(refused)
    assert svc.open_streams == 2

    await btcusdt.aclose()  # what purerpc does when the client has gone
    assert svc.open_streams == 1
    assert broadcasts["BTCUSDT"].subscribers == 0
    again = svc.BookSummaryForSymbol(SummaryRequest(symbol="ETHBTC"))
    assert (await anext(again)).arrival_time == 1
    await again.aclose()
    await default.aclose()
    assert svc.open_streams == 0


async def test_a_bad_symbol_is_refused_before_it_takes_a_slot() -> None:
    svc, _ = service(max_streams=1)
    with pytest.raises(purerpc.InvalidArgumentError):
        await anext(svc.BookSummaryForSymbol(SummaryRequest(symbol="ETH BTC")))
    with pytest.raises(purerpc.NotFoundError):
        await anext(svc.BookSummaryForSymbol(SummaryRequest(symbol="XRPUSDT")))
    assert svc.open_streams == 0


async def test_streams_are_counted_at_info_once_a_minute_and_each_one_only_at_debug(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aggtrio.server")
    svc, broadcasts = service(max_streams=5)
    broadcasts["ETHBTC"].publish(summary(1))
    nursery.start_soon(svc.report_streams, 60.0)
    # The handler is an async generator; the generated base class types it more loosely.
    streams = [cast(AsyncGenerator[PublishedSummary], svc.BookSummary(Empty())) for _ in range(3)]
    for stream in streams:
        await anext(stream)
    await streams[0].aclose()
    await trio.sleep(61)  # one report, then a quiet minute: no second line
    await trio.sleep(60)
    await streams[1].aclose()
    await trio.sleep(60)
    await streams[2].aclose()

    def messages(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    assert messages(logging.INFO) == [
        "client streams: 2 open (limit 5); 3 opened, 1 closed in the last 60 s",
        "client streams: 1 open (limit 5); 0 opened, 1 closed in the last 60 s",
    ]
    debug = messages(logging.DEBUG)
    assert sum(m.startswith("stream opened: ETHBTC") for m in debug) == 3
    assert sum(m.startswith("stream closed: ETHBTC") for m in debug) == 3
