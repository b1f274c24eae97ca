"""Assembles and runs the whole service: feeds -> aggregator -> broadcasts -> gRPC server."""

from __future__ import annotations

import functools
import logging
from typing import Any

import attrs
import trio

from aggtrio._proto import orderbook_pb2
from aggtrio._proto.grpc.health.v1 import health_pb2
from aggtrio.aggregator import Aggregator, PublishedSummary
from aggtrio.broadcast import Broadcast
from aggtrio.config import ServeConfig
from aggtrio.feed import Feed
from aggtrio.health import HealthService
from aggtrio.metrics import ServiceCollector, serve_metrics, service_registry
from aggtrio.model import BookEvent
from aggtrio.reflection import reflection_services
from aggtrio.server import OrderbookService, serve_grpc
from aggtrio.tls import HandshakeFailures, server_context
from aggtrio.venues import ADAPTERS

log = logging.getLogger(__name__)

# Venue events waiting for the aggregator. Bounded: if it ever fell behind, feeds wait
# (and their WebSocket queues fill) rather than memory growing.
EVENT_QUEUE_SIZE = 256

# Seconds between the last client stream ending and the sockets closing at shutdown.
STATUS_DRAIN = 0.2


@attrs.define
class RunningService:
    """A handle on a started service (for the CLI's shutdown, the demo and tests)."""

    config: ServeConfig
    port: int
    feeds: list[Feed]
    aggregator: Aggregator
    broadcasts: dict[str, Broadcast[PublishedSummary]]
    service: OrderbookService
    health: HealthService
    # The port /metrics is served on, or None without --metrics-port.
    metrics_port: int | None = None

    async def close_streams(self, grace: float) -> None:
        """End every client stream with UNAVAILABLE, waiting up to `grace` s for them to go.

        Health watchers see NOT_SERVING first, so balancers stop sending new clients.
        """
        everything: list[Broadcast[Any]] = [
            *self.broadcasts.values(),
            self.aggregator.all_symbols_live,
        ]
        for broadcast in everything:
            broadcast.close()
        with trio.move_on_after(grace):
            for broadcast in everything:
                await broadcast.wait_idle()
            # The streams have sent their last message and status; let clients read them
            # before the sockets close. A socket closed with a client frame still unread
            # (grpcio pings after data) is reset, and the reset can destroy what the client
            # had not read yet: a health watcher then missed its NOT_SERVING (measured).
            await trio.sleep(STATUS_DRAIN)


async def run_service(
    config: ServeConfig, *, task_status: trio.TaskStatus[RunningService] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run until cancelled; report a RunningService once the gRPC port is listening."""
    broadcasts = {symbol: Broadcast[PublishedSummary]() for symbol in config.symbols}
    aggregator = Aggregator(config.symbols, config.depth, broadcasts)
    send, receive = trio.open_memory_channel[BookEvent](EVENT_QUEUE_SIZE)
    feeds = [
        Feed(
            ADAPTERS[venue](config.symbols, config.depth),
            config.base_url(venue),
            send,
            liveness_timeout=config.liveness_timeout,
        )
        for venue in config.venues
    ]
    service = OrderbookService(
        broadcasts, config.default_symbol, max_streams=config.max_subscribers
    )
    health = HealthService(aggregator.all_symbols_live)
    servicers = [service, health]
    servicers += reflection_services(servicers, [orderbook_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR])
    tls_failures = None
    ssl_context = None
    if config.tls_cert is not None and config.tls_key is not None:
        ssl_context = server_context(config.tls_cert, config.tls_key)
        tls_failures = HandshakeFailures()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(aggregator.run, receive)
        nursery.start_soon(service.report_streams)
        for broadcast in broadcasts.values():
            nursery.start_soon(broadcast.resend_when_quiet, config.resend_interval)
        serve = functools.partial(
            serve_grpc,
            servicers,
            config.host,
            config.port,
            reuse_port=config.reuse_port,
            ssl_context=ssl_context,
            tls_failures=tls_failures,
        )
        port = await nursery.start(serve)
        metrics_port = None
        if config.metrics_port is not None:
            registry = service_registry(
                ServiceCollector(
                    feeds=feeds,
                    aggregator=aggregator,
                    broadcasts=broadcasts,
                    service=service,
                    health=health,
                    tls_failures=tls_failures,
                )
            )
            metrics_port = await nursery.start(
                serve_metrics, registry, config.host, config.metrics_port
            )
            log.info("metrics at http://%s:%d/metrics", config.host, metrics_port)
        log.info(
            "serving %s from %s on %s:%d (depth %d%s)",
            ", ".join(config.symbols),
            ", ".join(f"{f.venue} at {f.url}" for f in feeds),
            config.host,
            port,
            config.depth,
            ", TLS" if ssl_context is not None else "",
        )
        for feed in feeds:
            nursery.start_soon(feed.run, name=f"feed-{feed.venue}")
        task_status.started(
            RunningService(
                config, port, feeds, aggregator, broadcasts, service, health, metrics_port
            )
        )
