"""Coinbase Advanced Trade: the ``level2`` channel (full-book snapshot, then level updates).

Facts this relies on (Coinbase's Advanced Trade WebSocket docs and AsyncAPI spec):

* ``wss://advanced-trade-ws.coinbase.com``; one channel per subscribe message, sent within
  5 s of connecting; ``level2`` and ``heartbeats`` need no authentication.
* ``{"channel": "l2_data", "sequence_num": N, "events": [{"type": "snapshot" | "update",
  "product_id": "ETH-BTC", "updates": [{"side": "bid" | "offer", "event_time": …,
  "price_level": "…", "new_quantity": "…"}]}]}``; ``new_quantity`` is the level's new
  absolute size, ``"0"`` removes it. The snapshot is the whole book, all of which is kept so
  a deleted top level is refilled from deeper ones.
* ``{"channel": "heartbeats", …, "events": [{"current_time": …, "heartbeat_counter": N}]}``
  every second (the counter is an integer on the wire, a string in older prose docs: both
  are accepted); without it a quiet connection is closed after 60-90 s.
* ``{"channel": "subscriptions", …, "events": [{"subscriptions": {"level2": [...]}}]}``
  acknowledges each (un)subscribe with the connection's current subscriptions; errors are
  ``{"type": "error", "message": …}``.
* (?) ``sequence_num`` counts every message of the connection, all channels together. The
  docs do not say whether a large snapshot may be split over several messages; nothing
  documents it, so a snapshot event is taken to be the whole book.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from aggtrio.model import PriceLevel
from aggtrio.symbols import venue_pair
from aggtrio.venues.base import (
    AdapterEvent,
    CrossedBookError,
    MalformedMessageError,
    Resync,
    Subscribed,
    VenueAdapter,
    VenueError,
    load_json_object,
)
from aggtrio.venues.delta import DeltaBooks

L2_CHANNEL = "level2"
HEARTBEATS_CHANNEL = "heartbeats"

# One event of an l2_data message, checked: (symbol, is snapshot, bids, asks).
_Event = tuple[str, bool, list[PriceLevel], list[PriceLevel]]


def subscribe_message(channel: str, product_ids: Sequence[str], kind: str = "subscribe") -> str:
    """A Coinbase (un)subscribe request for one channel."""
    return orjson.dumps(
        {"type": kind, "product_ids": list(product_ids), "channel": channel}
    ).decode()


class CoinbaseAdapter(VenueAdapter):
    name: ClassVar[str] = "coinbase"
    default_url: ClassVar[str] = "wss://advanced-trade-ws.coinbase.com"
    # Heartbeats come every second: five missed ones mean the connection is stale.
    default_liveness_timeout: ClassVar[float] = 5.0

    def __init__(self, symbols: Sequence[str], depth: int) -> None:
        super().__init__(symbols, depth)
        self._symbol_by_product = {venue_pair(self.name, s): s for s in self.symbols}
        self._books = DeltaBooks(self.name, depth)
        # The sequence_num the next message must carry; None until the first one.
        self._next_sequence: int | None = None
        self._heartbeat_counter: int | None = None
        # Products the venue has confirmed, so each is reported Subscribed once.
        self._confirmed: set[str] = set()
        # Set by a continuity break, cleared by the next snapshot: one Resync per break.
        self._broken = False

    def connect_url(self, base_url: str) -> str:
        return base_url.rstrip("/")

    def subscribe_messages(self) -> list[str]:
        products = list(self._symbol_by_product)
        return [
            subscribe_message(L2_CHANNEL, products),
            subscribe_message(HEARTBEATS_CHANNEL, products),
        ]

    def resubscribe_messages(self, symbol: str) -> list[str]:
        """None: a break is resynced by reconnecting (see :meth:`_break`)."""
        return []

    def handle_message(self, message: str | bytes, recv_ns: int) -> list[AdapterEvent]:
        envelope = load_json_object(message)
        channel = envelope.get("channel")
        if channel == "l2_data":
            return self._l2_data(envelope, recv_ns)
        if channel == HEARTBEATS_CHANNEL:
            return self._heartbeat(envelope)
        if channel == "subscriptions":
            return self._subscriptions(envelope)
        if envelope.get("type") == "error":
            detail = envelope.get("message")
            reason = envelope.get("reason")
            suffix = f" ({reason!r:.200})" if reason else ""
            return [VenueError(f"coinbase error: {detail!r:.200}{suffix}")]
        if isinstance(channel, str):
            # "New message types can be added at any time. Clients are expected to ignore
            # messages they do not support." They still count in the connection's sequence.
            return self._sequence(envelope, None)
        raise MalformedMessageError("message has neither a channel nor an error type")

    # -- continuity ----------------------------------------------------------------------

    def _sequence(self, envelope: dict[str, Any], symbol: str | None) -> list[AdapterEvent]:
        """Check the message's sequence_num against the connection's; a Resync on a break."""
        number = envelope.get("sequence_num")
        if type(number) is not int or number < 0:
            raise MalformedMessageError(f"sequence_num {number!r:.40} is not a count")
        expected = self._next_sequence
        if expected is None or number == expected:
            self._next_sequence = number + 1
            return []
        # A replayed or late message must not make the numbers after it look like a gap.
        self._next_sequence = max(expected, number + 1)
        if number > expected:
            what = f"sequence gap: expected {expected}, got {number}"
        elif number == expected - 1:
            what = f"duplicate sequence_num {number}"
        else:
            what = f"sequence_num went back from {expected - 1} to {number}"
        return self._break(what, symbol)

    def _break(self, reason: str, symbol: str | None) -> list[AdapterEvent]:
        """The connection's stream broke: every book on it is suspect.

        sequence_num counts the whole connection, so a missing, repeated or late message
        cannot be pinned on one product: any book (or a pending snapshot) may have lost an
        update. Every book is dropped, and one Resync (naming the product whose message
        revealed the break, else the first synced one) makes the feed reconnect, since
        :meth:`resubscribe_messages` is empty: a fresh connection restarts the numbering and
        snapshots every product, the feed takes every symbol out of the merged book at once,
        and the break is counted and logged once. Resubscribing every product on this
        connection instead would need a Resync per symbol to take each out of the book.
        """
        synced = [s for s in self.symbols if self._books.synced(s)]
        for name in synced:
            self._books.break_(name, reason)
        if self._broken:
            return []  # already resyncing: later messages of this connection add nothing
        self._broken = True
        if symbol is None or symbol not in synced:
            symbol = synced[0] if synced else self.symbols[0]
        return [Resync(symbol, f"{reason} (connection-wide: every product resyncs)")]

    # -- messages ------------------------------------------------------------------------

    def _l2_data(self, envelope: dict[str, Any], recv_ns: int) -> list[AdapterEvent]:
        raw_events = envelope.get("events")
        if type(raw_events) is not list or not raw_events:
            raise MalformedMessageError("l2_data without events")
        # The whole message is checked before anything is applied.
        events = [self._l2_event(event) for event in raw_events]
        broken = self._sequence(envelope, events[0][0])
        if broken:
            return broken
        books = self._books
        touched: list[str] = []
        for symbol, snapshot, bids, asks in events:
            if snapshot:
                books.snapshot(symbol, bids, asks)
                self._broken = False
            else:
                book = books.book(symbol)
                if book is None:
                    continue  # awaiting a snapshot: deltas mean nothing yet
                book.apply(bids, asks)
            if symbol not in touched:
                touched.append(symbol)
        published: list[AdapterEvent] = []
        for symbol in touched:
            published += books.publish(symbol, recv_ns)
        return published

    def _l2_event(self, event: object) -> _Event:
        if type(event) is not dict:
            raise MalformedMessageError("l2_data event is not an object")
        product = event.get("product_id")
        symbol = self._symbol_by_product.get(product) if type(product) is str else None
        if symbol is None:
            raise MalformedMessageError(
                f"l2_data for a product we did not subscribe: {product!r:.40}"
            )
        kind = event.get("type")
        if kind not in ("snapshot", "update"):
            raise MalformedMessageError(f"l2_data event type {kind!r:.40} is unknown")
        updates = event.get("updates")
        if type(updates) is not list:
            raise MalformedMessageError("l2_data event without an updates list")
        bids, asks = _levels(updates)
        if kind == "update":
            return symbol, False, bids, asks
        # A snapshot replaces the book: it must be one the merge can trust.
        bids = [level for level in bids if level[1]]
        asks = [level for level in asks if level[1]]
        if not bids or not asks:
            raise MalformedMessageError(
                "snapshot has no bids or offers"
                if not bids and not asks
                else "snapshot is one-sided"
            )
        best_bid = max(price for price, _ in bids)
        best_ask = min(price for price, _ in asks)
        if best_bid >= best_ask:
            raise CrossedBookError(
                f"snapshot is crossed: best bid {best_bid!r} >= best offer {best_ask!r}"
            )
        return symbol, True, bids, asks

    def _heartbeat(self, envelope: dict[str, Any]) -> list[AdapterEvent]:
        events = envelope.get("events")
        if type(events) is not list or not events or type(events[0]) is not dict:
            raise MalformedMessageError("heartbeats message without events")
        counter = _count(events[0].get("heartbeat_counter"))
        broken = self._sequence(envelope, None)
        last, self._heartbeat_counter = self._heartbeat_counter, counter
        if broken or last is None or counter == last + 1:
            return broken
        # With a connection-wide sequence_num this is already caught; it also guards
        # against the (?) in that fact: heartbeats are numbered one by one regardless.
        return self._break(f"heartbeat_counter went from {last} to {counter}", None)

    def _subscriptions(self, envelope: dict[str, Any]) -> list[AdapterEvent]:
        events = envelope.get("events")
        if type(events) is not list or not events or type(events[0]) is not dict:
            raise MalformedMessageError("subscriptions message without events")
        current = events[0].get("subscriptions")
        if type(current) is not dict:
            raise MalformedMessageError("subscriptions event without a subscriptions object")
        products = current.get(L2_CHANNEL, [])
        if type(products) is not list:
            raise MalformedMessageError("level2 subscriptions are not a list")
        broken = self._sequence(envelope, None)
        # The ack lists everything subscribed now: report each of ours once.
        listed = {p for p in products if type(p) is str and p in self._symbol_by_product}
        new = [p for p in self._symbol_by_product if p in listed and p not in self._confirmed]
        self._confirmed = listed
        return broken + [Subscribed(self._symbol_by_product[p]) for p in new]


def _levels(updates: list[Any]) -> tuple[list[PriceLevel], list[PriceLevel]]:
    """An event's updates as (bids, asks) of (price, new size); any bad entry is malformed."""
    bids: list[PriceLevel] = []
    asks: list[PriceLevel] = []
    append_bid, append_ask = bids.append, asks.append
    inf = math.inf
    try:
        for update in updates:
            price_text = update["price_level"]
            amount_text = update["new_quantity"]
            side = update["side"]
            if type(price_text) is not str or type(amount_text) is not str:
                raise TypeError
            price = float(price_text)
            amount = float(amount_text)
            if not (0.0 < price < inf and 0.0 <= amount < inf):
                raise ValueError
            if side == "bid":
                append_bid((price, amount))
            elif side == "offer":
                append_ask((price, amount))
            else:
                raise ValueError
    except (TypeError, KeyError, ValueError):
        raise MalformedMessageError(f"bad level update {_describe(update)}") from None
    return bids, asks


def _describe(update: object) -> str:
    """Why one level update is bad, for the log."""
    if type(update) is not dict:
        return f"{update!r:.60}: not an object"
    missing = [k for k in ("side", "price_level", "new_quantity") if k not in update]
    if missing:
        return f"{update!r:.80}: no {', '.join(missing)}"
    side = update["side"]
    if side not in ("bid", "offer"):
        return f"{update!r:.80}: side {side!r:.20} is neither bid nor offer"
    return f"{update!r:.80}: price and size must be finite decimal strings, price positive"


def _count(value: object) -> int:
    """A heartbeat_counter: a non-negative integer, or its decimal text."""
    if type(value) is str and value.isascii() and value.isdigit() and len(value) < 20:
        return int(value)
    if type(value) is int and value >= 0:
        return value
    raise MalformedMessageError(f"heartbeat_counter {value!r:.40} is not a count")
