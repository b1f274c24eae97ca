"""Assembles and runs the whole service: feeds -> aggregator -> broadcasts -> gRPC server."""

from __future__ import annotations

import functools
import logging

import attrs
import trio

from aggtrio.aggregator import Aggregator, PublishedSummary
from aggtrio.broadcast import Broadcast
from aggtrio.config import ServeConfig
from aggtrio.feed import Feed
from aggtrio.model import BookEvent
from aggtrio.server import OrderbookService, serve_grpc
from aggtrio.venues import ADAPTERS

log = logging.getLogger(__name__)

# Venue events waiting for the aggregator. Bounded: if it ever fell behind, feeds wait
# (and their WebSocket queues fill) rather than memory growing.
EVENT_QUEUE_SIZE = 256


@attrs.define
class RunningService:
    """A handle on a started service (for the CLI's shutdown, the demo and tests)."""

    config: ServeConfig
    port: int
    feeds: list[Feed]
    aggregator: Aggregator
    broadcasts: dict[str, Broadcast[PublishedSummary]]
    service: OrderbookService

    async def close_streams(self, grace: float) -> None:
        """End every client stream with UNAVAILABLE, waiting up to `grace` s for them to go."""
        for broadcast in self.broadcasts.values():
            broadcast.close()
        with trio.move_on_after(grace):
            for broadcast in self.broadcasts.values():
                await broadcast.wait_idle()


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
    async with trio.open_nursery() as nursery:
        nursery.start_soon(aggregator.run, receive)
        nursery.start_soon(service.report_streams)
        for broadcast in broadcasts.values():
            nursery.start_soon(broadcast.resend_when_quiet, config.resend_interval)
        serve = functools.partial(
            serve_grpc, service, config.host, config.port, reuse_port=config.reuse_port
        )
        port = await nursery.start(serve)
        log.info(
            "serving %s from %s on %s:%d (depth %d)",
            ", ".join(config.symbols),
            ", ".join(f"{f.venue} at {f.url}" for f in feeds),
            config.host,
            port,
            config.depth,
        )
        for feed in feeds:
            nursery.start_soon(feed.run, name=f"feed-{feed.venue}")
        task_status.started(RunningService(config, port, feeds, aggregator, broadcasts, service))
