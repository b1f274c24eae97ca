"""The metrics endpoint in-process: histogram buckets, exposition, and the HTTP edges."""

from __future__ import annotations

import functools
import time

import trio
from prometheus_client.parser import text_string_to_metric_families

from aggtrio.aggregator import LATENCY_BUCKETS, Aggregator, LatencyHistogram, PublishedSummary
from aggtrio.broadcast import Broadcast
from aggtrio.feed import Feed, FeedState
from aggtrio.health import HealthService
from aggtrio.metrics import (
    MAX_REQUEST_BYTES,
    ServiceCollector,
    serve_metrics,
    service_registry,
)
from aggtrio.model import BookEvent, VenueBook
from aggtrio.server import OrderbookService
from aggtrio.tls import HandshakeFailures
from aggtrio.venues import ADAPTERS


def test_a_latency_on_a_bucket_bound_counts_in_that_bucket() -> None:
    histogram = LatencyHistogram()
    histogram.observe_ns(round(LATENCY_BUCKETS[0] * 1e9))  # le="1e-05": included
    histogram.observe_ns(round(LATENCY_BUCKETS[0] * 1e9) + 1)
    histogram.observe_ns(5 * 10**9)  # beyond the last bound: +Inf only
    assert histogram.counts[0] == 1
    assert histogram.counts[1] == 1
    assert histogram.counts[-1] == 1
    assert sum(histogram.counts) == 3
    assert histogram.sum_ns == 2 * round(LATENCY_BUCKETS[0] * 1e9) + 1 + 5 * 10**9


def make_collector() -> tuple[ServiceCollector, Aggregator, list[Feed], HandshakeFailures]:
    symbols = ("ETHBTC",)
    broadcasts = {symbol: Broadcast[PublishedSummary]() for symbol in symbols}
    aggregator = Aggregator(symbols, 10, broadcasts)
    send, _ = trio.open_memory_channel[BookEvent](1)
    feeds = [Feed(ADAPTERS["binance"](symbols, 10), "ws://127.0.0.1:1", send)]
    failures = HandshakeFailures()
    collector = ServiceCollector(
        feeds=feeds,
        aggregator=aggregator,
        broadcasts=broadcasts,
        service=OrderbookService(broadcasts, "ETHBTC", max_streams=5),
        health=HealthService(aggregator.all_symbols_live),
        tls_failures=failures,
    )
    return collector, aggregator, feeds, failures


def samples(collector: ServiceCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    text = generate_latest(service_registry(collector)).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_collector_reads_the_pipeline_at_scrape_time() -> None:
    collector, aggregator, feeds, failures = make_collector()
    before = samples(collector)
    assert before[("aggtrio_serving", ())] == 0
    assert before[("aggtrio_max_streams", ())] == 5
    assert before[("aggtrio_venue_state", (("state", "connecting"), ("venue", "binance")))] == 1
    # No message yet: no age rather than a made-up one.
    assert not any(name == "aggtrio_venue_last_message_age_seconds" for name, _ in before)

    feeds[0].stats.messages = 7
    feeds[0].stats.resyncs = 2
    feeds[0].stats.state = FeedState.LIVE
    feeds[0].stats.last_message_ns = time.time_ns()
    failures.count = 3
    arrival = time.time_ns()
    aggregator.apply(VenueBook("binance", "ETHBTC", ((1.0, 1.0),), ((2.0, 1.0),), arrival))
    after = samples(collector)
    venue = (("venue", "binance"),)
    assert after[("aggtrio_venue_messages_total", venue)] == 7
    assert after[("aggtrio_venue_resyncs_total", venue)] == 2
    assert after[("aggtrio_venue_state", (("state", "live"), ("venue", "binance")))] == 1
    assert after[("aggtrio_venue_state", (("state", "connecting"), ("venue", "binance")))] == 0
    assert 0 <= after[("aggtrio_venue_last_message_age_seconds", venue)] < 5
    assert after[("aggtrio_tls_handshake_failures_total", ())] == 3
    assert after[("aggtrio_serving", ())] == 1
    symbol = (("symbol", "ETHBTC"),)
    assert after[("aggtrio_summaries_published_total", symbol)] == 1
    assert after[("aggtrio_publish_latency_seconds_count", symbol)] == 1
    assert after[("aggtrio_publish_latency_seconds_bucket", (("le", "+Inf"), *symbol))] == 1


async def request(port: int, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        received = b""
        while chunk := await stream.receive_some():
            received += chunk
        return received


async def test_the_endpoint_answers_get_and_refuses_the_rest(nursery: trio.Nursery) -> None:
    collector, *_ = make_collector()
    registry = service_registry(collector)
    port = await nursery.start(functools.partial(serve_metrics, registry, "127.0.0.1", 0))

    ok = await request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"aggtrio_venue_messages_total" in body
    assert f"Content-Length: {len(body)}".encode() in head

    only_head = await request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert only_head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert only_head.endswith(b"\r\n\r\n")

    assert (await request(port, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
    assert (await request(port, b"GET /admin HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
    assert (await request(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    # One byte over the limit: the server has read all of it when it answers (unread
    # bytes would make its close a reset, which can destroy the answer in flight).
    start = b"GET /metrics HTTP/1.1\r\nX: "
    huge = start + b"a" * (MAX_REQUEST_BYTES + 1 - len(start))
    assert (await request(port, huge)).startswith(b"HTTP/1.1 431 ")
    nursery.cancel_scope.cancel()
