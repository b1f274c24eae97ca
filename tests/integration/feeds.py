"""Helpers for tests that drive a Feed directly against a venue (no aggregator, no server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from aggtrio.feed import Feed
from aggtrio.model import BookEvent
from aggtrio.venues.base import VenueAdapter
from aggtrio.venues.bitstamp import BitstampAdapter


class FastHeartbeat(BitstampAdapter):
    """Bitstamp with a 0.2 s heartbeat, so liveness can be tested in well under a second."""

    heartbeat_interval = 0.2


def start_feed(
    nursery: trio.Nursery, adapter: VenueAdapter, url: str, **options: Any
) -> tuple[Feed, trio.MemoryReceiveChannel[BookEvent]]:
    """Run a Feed for `adapter` against `url` in `nursery`; return it and its events.

    The channel holds plenty, so a test that reads no events never holds the feed up.
    """
    send, receive = trio.open_memory_channel[BookEvent](1024)
    feed = Feed(adapter, url, send, **options)
    nursery.start_soon(feed.run)
    return feed, receive


async def next_event(events: trio.MemoryReceiveChannel[BookEvent], kind: type) -> BookEvent:
    """The next event of `kind`, skipping others."""
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError("channel closed")


async def wait_until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - polling state that other tasks own
        await trio.sleep(0.01)
