"""The health service's answers, driven by the aggregator's own events (no network)."""

from __future__ import annotations

import time
from contextlib import aclosing

import purerpc
import pytest

from aggtrio._proto.grpc.health.v1.health_pb2 import HealthCheckRequest, HealthListRequest
from aggtrio.aggregator import Aggregator, PublishedSummary
from aggtrio.broadcast import Broadcast
from aggtrio.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, HealthService
from aggtrio.model import VenueBook, VenueDown


def book(venue: str, symbol: str) -> VenueBook:
    return VenueBook(venue, symbol, ((10.0, 1.0),), ((11.0, 1.0),), time.time_ns())


def make() -> tuple[Aggregator, HealthService]:
    symbols = ("ETHBTC", "BTCUSDT")
    broadcasts = {symbol: Broadcast[PublishedSummary]() for symbol in symbols}
    aggregator = Aggregator(symbols, 10, broadcasts)
    return aggregator, HealthService(aggregator.all_symbols_live)


async def check(health: HealthService, service: str = "") -> int:
    return int((await health.Check(HealthCheckRequest(service=service))).status)


async def test_serving_only_while_every_symbol_has_a_live_venue() -> None:
    aggregator, health = make()
    assert await check(health) == NOT_SERVING  # nothing yet
    aggregator.apply(book("binance", "ETHBTC"))
    assert await check(health) == NOT_SERVING  # BTCUSDT has no venue
    aggregator.apply(book("bitstamp", "BTCUSDT"))
    assert await check(health) == SERVING
    assert await check(health, "orderbook.OrderbookAggregator") == SERVING
    aggregator.apply(book("binance", "BTCUSDT"))
    aggregator.apply(VenueDown("bitstamp", ("BTCUSDT",), "gone", time.time_ns()))
    assert await check(health) == SERVING  # binance still carries BTCUSDT
    aggregator.apply(VenueDown("binance", ("ETHBTC", "BTCUSDT"), "gone", time.time_ns()))
    assert await check(health) == NOT_SERVING
    listed = await health.List(HealthListRequest())
    assert {name: int(status.status) for name, status in listed.statuses.items()} == {
        "": NOT_SERVING,
        "orderbook.OrderbookAggregator": NOT_SERVING,
    }


async def test_unknown_service_is_not_found() -> None:
    _, health = make()
    with pytest.raises(purerpc.NotFoundError):
        await check(health, "orderbook.Other")


async def test_watch_sends_changes_only_and_not_serving_at_shutdown() -> None:
    aggregator, health = make()
    async with aclosing(health.Watch(HealthCheckRequest())) as watch:
        assert int((await anext(watch)).status) == NOT_SERVING
        aggregator.apply(book("binance", "ETHBTC"))  # still NOT_SERVING: nothing to send
        aggregator.apply(book("binance", "BTCUSDT"))
        assert int((await anext(watch)).status) == SERVING
        aggregator.apply(book("bitstamp", "BTCUSDT"))  # SERVING still
        aggregator.all_symbols_live.close()
        assert int((await anext(watch)).status) == NOT_SERVING
        with pytest.raises(purerpc.UnavailableError):
            await anext(watch)
    assert health.open_watches == 0


async def test_watch_of_an_unknown_service_says_so_and_stays_open() -> None:
    aggregator, health = make()
    async with aclosing(health.Watch(HealthCheckRequest(service="nope"))) as watch:
        assert int((await anext(watch)).status) == SERVICE_UNKNOWN
        aggregator.apply(book("binance", "ETHBTC"))
        aggregator.apply(book("binance", "BTCUSDT"))
        aggregator.all_symbols_live.close()
        with pytest.raises(purerpc.UnavailableError):
            await anext(watch)


async def test_watches_have_their_own_limit() -> None:
    health = HealthService(Broadcast[bool](), max_watches=1)
    async with aclosing(health.Watch(HealthCheckRequest())) as first:
        await anext(first)
        async with aclosing(health.Watch(HealthCheckRequest())) as second:
            with pytest.raises(purerpc.ResourceExhaustedError):
                await anext(second)
    async with aclosing(health.Watch(HealthCheckRequest())) as again:
        assert int((await anext(again)).status) == NOT_SERVING
