"""Bitstamp: the ``order_book_<pair>`` channel (top 100 levels, pushed when the top changes).

A quiet book can be silent for a long time, so liveness rests on the client heartbeat,
which Bitstamp answers: silence after a heartbeat is staleness, silence alone is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import orjson
import simdjson

from aggtrio.model import VenueBook
from aggtrio.venues.base import (
    AdapterEvent,
    BookTops,
    MalformedMessageError,
    ReconnectRequested,
    Subscribed,
    VenueAdapter,
    VenueError,
    lazy_json_object,
    load_json_object,
    top_entries,
)

CHANNEL_PREFIX = "order_book_"
HEARTBEAT = orjson.dumps({"event": "bts:heartbeat"}).decode()


class BitstampAdapter(VenueAdapter):
    name: ClassVar[str] = "bitstamp"
    default_url: ClassVar[str] = "wss://ws.bitstamp.net"
    default_liveness_timeout: ClassVar[float] = 15.0  # three heartbeats unanswered
    heartbeat_interval: ClassVar[float | None] = 5.0

    def __init__(self, symbols: Sequence[str], depth: int) -> None:
        super().__init__(symbols, depth)
        self._symbol_by_channel = {CHANNEL_PREFIX + s.lower(): s for s in self.symbols}
        self._tops = BookTops(depth)

    def connect_url(self, base_url: str) -> str:
        return base_url.rstrip("/")

    def subscribe_messages(self) -> list[str]:
        return [
            orjson.dumps({"event": "bts:subscribe", "data": {"channel": channel}}).decode()
            for channel in self._symbol_by_channel
        ]

    def heartbeat_message(self) -> str:
        return HEARTBEAT

    def handle_message(self, message: str | bytes, recv_ns: int) -> list[AdapterEvent]:
        document = lazy_json_object(message)
        if document.get("event") == "data":
            return self._book(document, recv_ns)
        # Anything else is small and rare: plain Python values are simpler to inspect.
        envelope = load_json_object(message)
        event = envelope.get("event")
        if event == "bts:heartbeat":
            return []
        if event == "bts:subscription_succeeded":
            symbol = self._symbol_for(envelope.get("channel"))
            return [Subscribed(symbol)] if symbol else []
        if event == "bts:request_reconnect":
            return [ReconnectRequested("bitstamp requested a reconnect")]
        if event == "bts:error":
            return [VenueError(f"bitstamp error: {envelope.get('data')!r:.200}")]
        if event == "bts:unsubscription_succeeded":
            return []
        raise MalformedMessageError(f"unexpected event {event!r:.60}")

    def _symbol_for(self, channel: object) -> str | None:
        # The channel comes off the wire: it may be any JSON value, including unhashable ones.
        return self._symbol_by_channel.get(channel) if isinstance(channel, str) else None

    def _book(self, envelope: simdjson.Object, recv_ns: int) -> list[AdapterEvent]:
        channel = envelope.get("channel")
        symbol = self._symbol_for(channel)
        if symbol is None:
            raise MalformedMessageError(
                f"data for a channel we did not subscribe: {top_entries(channel, 1)!r:.60}"
            )
        data = envelope.get("data")
        if not isinstance(data, simdjson.Object):
            raise MalformedMessageError("data message without a data object")
        book = self._tops.update(
            symbol,
            top_entries(data.get("bids"), self.depth),
            top_entries(data.get("asks"), self.depth),
        )
        if book is None:
            return []  # Bitstamp sends 100 levels on any change; this one was deeper
        return [VenueBook(self.name, symbol, book[0], book[1], recv_ns)]
