"""Prometheus metrics on `serve --metrics-port`: venue feeds, symbols, subscribers, latency.

Nothing is counted here: a collector reads the counters the pipeline keeps anyway
(FeedStats, the aggregator's per-symbol counts and latency buckets, the broadcasts'
subscriber counts) when Prometheus scrapes, so metrics add no cost per message.

The endpoint is a small HTTP/1.1 handler on trio rather than prometheus-client's own
server, which runs in a thread: a scrape then reads the pipeline's state from the trio
thread, between two of its steps, and never sees a half-made change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aggtrio.aggregator import LATENCY_BUCKETS, Aggregator, PublishedSummary
from aggtrio.broadcast import Broadcast
from aggtrio.feed import Feed, FeedState
from aggtrio.health import HealthService
from aggtrio.server import OrderbookService
from aggtrio.tls import HandshakeFailures

log = logging.getLogger(__name__)

# A scrape request is a few hundred bytes; anything bigger or slower is not Prometheus.
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_TIMEOUT = 10.0
METRICS_PATHS = ("/metrics", "/")
# The latency histogram's bucket labels ("le"), the last one for the overflow bucket.
_BUCKET_LABELS = (*(repr(bound) for bound in LATENCY_BUCKETS), "+Inf")


class ServiceCollector(Collector):
    """Reads one service's state at scrape time."""

    def __init__(
        self,
        *,
        feeds: Sequence[Feed],
        aggregator: Aggregator,
        broadcasts: Mapping[str, Broadcast[PublishedSummary]],
        service: OrderbookService,
        health: HealthService,
        tls_failures: HandshakeFailures | None,
    ) -> None:
        self._feeds = feeds
        self._aggregator = aggregator
        self._broadcasts = broadcasts
        self._service = service
        self._health = health
        self._tls_failures = tls_failures

    def collect(self) -> Iterator[Metric]:
        yield from self._venue_metrics()
        yield from self._symbol_metrics()
        yield GaugeMetricFamily(
            "aggtrio_open_streams", "Client summary streams open now.", self._service.open_streams
        )
        yield GaugeMetricFamily(
            "aggtrio_max_streams",
            "Client summary streams served at once before RESOURCE_EXHAUSTED.",
            self._service.max_streams,
        )
        yield GaugeMetricFamily(
            "aggtrio_health_watches",
            "gRPC health Watch streams open now.",
            self._health.open_watches,
        )
        yield GaugeMetricFamily(
            "aggtrio_serving",
            "1 while every symbol has a live venue (gRPC health SERVING), else 0.",
            1 if self._health.serving else 0,
        )
        if self._tls_failures is not None:
            yield CounterMetricFamily(
                "aggtrio_tls_handshake_failures",
                "TLS handshakes on the gRPC port that failed or timed out.",
                self._tls_failures.count,
            )

    def _venue_metrics(self) -> Iterator[Metric]:
        counters: list[tuple[str, str, Callable[[Feed], int]]] = [
            ("messages", "Messages received from the venue.", lambda f: f.stats.messages),
            (
                "malformed_messages",
                "Venue messages that could not be used (logged and dropped).",
                lambda f: f.stats.malformed,
            ),
            (
                "crossed_books",
                "Of the malformed messages: the venue's own book was crossed.",
                lambda f: f.stats.crossed,
            ),
            ("errors", "Error messages sent by the venue.", lambda f: f.stats.venue_errors),
            (
                "reconnects",
                "Connections opened after the first, for any reason.",
                lambda f: f.stats.reconnects,
            ),
            (
                "resyncs",
                "Symbol books refetched after a sequence gap or checksum mismatch.",
                lambda f: f.stats.resyncs,
            ),
            (
                "stalls",
                "Connections dropped for silence past the liveness timeout.",
                lambda f: f.stats.stalls,
            ),
        ]
        for name, documentation, read in counters:
            family = CounterMetricFamily(f"aggtrio_venue_{name}", documentation, labels=["venue"])
            for feed in self._feeds:
                family.add_metric([feed.venue], read(feed))
            yield family
        state = GaugeMetricFamily(
            "aggtrio_venue_state",
            "1 for the venue connection's current state, 0 for the others.",
            labels=["venue", "state"],
        )
        age = GaugeMetricFamily(
            "aggtrio_venue_last_message_age_seconds",
            "Seconds since the venue's last message (absent before the first).",
            labels=["venue"],
        )
        now_ns = time.time_ns()
        for feed in self._feeds:
            for candidate in FeedState:
                state.add_metric(
                    [feed.venue, candidate.name.lower()], 1 if feed.stats.state is candidate else 0
                )
            seconds = feed.stats.last_message_age(now_ns)
            if seconds is not None:
                age.add_metric([feed.venue], max(seconds, 0.0))
        yield state
        yield age

    def _symbol_metrics(self) -> Iterator[Metric]:
        published = CounterMetricFamily(
            "aggtrio_summaries_published",
            "Changed merged books published (quiet-symbol resends not included).",
            labels=["symbol"],
        )
        subscribers = GaugeMetricFamily(
            "aggtrio_subscribers", "Client streams subscribed to the symbol.", labels=["symbol"]
        )
        live = GaugeMetricFamily(
            "aggtrio_live_venues", "Venues merged into the symbol's book now.", labels=["symbol"]
        )
        latency = HistogramMetricFamily(
            "aggtrio_publish_latency_seconds",
            "From receipt of a venue message to publishing the summary it changed.",
            labels=["symbol"],
        )
        for symbol, broadcast in self._broadcasts.items():
            published.add_metric([symbol], self._aggregator.published_count(symbol))
            subscribers.add_metric([symbol], broadcast.subscribers)
            live.add_metric([symbol], len(self._aggregator.live_venues(symbol)))
            histogram = self._aggregator.latency(symbol)
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for bound, count in zip(_BUCKET_LABELS, histogram.counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([symbol], buckets, histogram.sum_ns / 1e9)
        yield published
        yield subscribers
        yield live
        yield latency


def service_registry(collector: ServiceCollector) -> CollectorRegistry:
    """A registry of one service's metrics (not the global one: tests run several)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `registry` at http://host:port/metrics until cancelled; report the bound port."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    task_status.started(bound)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                await _answer(stream, registry)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # a client that went away or never asked: nothing to answer
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


async def _answer(stream: trio.SocketStream, registry: CollectorRegistry) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        if len(request) > MAX_REQUEST_BYTES:
            await _respond(stream, 431, "text/plain", b"request too large\n")
            return
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        request += chunk
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    request_line, *header_lines = head.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        await _respond(stream, 400, "text/plain", b"bad request\n")
        return
    method, target, _version = parts
    if method not in ("GET", "HEAD"):
        await _respond(stream, 405, "text/plain", b"only GET\n", extra="Allow: GET, HEAD\r\n")
        return
    if target.split("?", 1)[0] not in METRICS_PATHS:
        await _respond(stream, 404, "text/plain", b"metrics are at /metrics\n")
        return
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    encoder, content_type = choose_encoder(headers.get("accept", ""))
    body = encoder(registry)
    await _respond(stream, 200, content_type, body, head_only=method == "HEAD")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


async def _respond(
    stream: trio.SocketStream,
    status: int,
    content_type: str,
    body: bytes,
    *,
    extra: str = "",
    head_only: bool = False,
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    await stream.send_all(head.encode("latin-1") + (b"" if head_only else body))
