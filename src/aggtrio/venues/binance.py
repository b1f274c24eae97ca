"""Binance spot: the partial book stream ``<sym>@depth20@100ms`` on a combined connection.

The combined form (``/stream?streams=a/b``) is used because the partial-book payload carries
no symbol: the wrapper's ``stream`` name says which book it is. Binance pushes the full top 20
every 100 ms whether or not it changed, so silence really means the feed is stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from aggtrio.model import VenueBook
from aggtrio.venues.base import (
    AdapterEvent,
    BookTops,
    MalformedMessageError,
    ReconnectRequested,
    VenueAdapter,
    VenueError,
    load_json_object,
)

STREAM_SUFFIX = "@depth20@100ms"


class BinanceAdapter(VenueAdapter):
    name: ClassVar[str] = "binance"
    default_url: ClassVar[str] = "wss://stream.binance.com:9443"
    default_liveness_timeout: ClassVar[float] = 5.0  # 50 missed 100 ms pushes
    max_connection_age: ClassVar[float | None] = 24 * 3600.0

    def __init__(self, symbols: Sequence[str], depth: int) -> None:
        super().__init__(symbols, depth)
        self._symbol_by_stream = {s.lower() + STREAM_SUFFIX: s for s in self.symbols}
        self._tops = BookTops(depth)

    def connect_url(self, base_url: str) -> str:
        # Subscribing through the URL costs no subscribe messages (they count against the
        # 5 messages/s limit) and resubscribes everything on every reconnect by construction.
        return f"{base_url.rstrip('/')}/stream?streams={'/'.join(self._symbol_by_stream)}"

    def subscribe_messages(self) -> list[str]:
        return []

    def handle_message(self, message: str | bytes, recv_ns: int) -> list[AdapterEvent]:
        envelope = load_json_object(message)
        stream = envelope.get("stream")
        data = envelope.get("data")
        if stream is None:
            return self._handle_control(envelope)
        if not isinstance(data, dict):
            raise MalformedMessageError("combined-stream message without a data object")
        if stream == "!serverShutdown" or data.get("e") == "serverShutdown":
            return [ReconnectRequested("binance announced a server shutdown")]
        symbol = self._symbol_by_stream.get(stream) if isinstance(stream, str) else None
        if symbol is None:
            raise MalformedMessageError(f"data for a stream we did not subscribe: {stream!r:.60}")
        try:
            raw_bids = data["bids"][: self.depth]
            raw_asks = data["asks"][: self.depth]
        except (KeyError, TypeError):
            raise MalformedMessageError("depth payload without bids/asks lists") from None
        book = self._tops.update(symbol, raw_bids, raw_asks)
        if book is None:
            return []  # the same top again: Binance pushes every 100 ms, changed or not
        return [VenueBook(self.name, symbol, book[0], book[1], recv_ns)]

    def _handle_control(self, message: dict[str, Any]) -> list[AdapterEvent]:
        if "error" in message:
            return [VenueError(f"binance error: {message['error']!r:.200}")]
        if "result" in message and "id" in message:
            return []  # acknowledgement of a request we sent
        if message.get("e") == "serverShutdown":
            return [ReconnectRequested("binance announced a server shutdown")]
        raise MalformedMessageError("message is neither stream data nor a response")
