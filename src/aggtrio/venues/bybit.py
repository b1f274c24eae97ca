"""Bybit v5 public spot: the ``orderbook.{depth}.{symbol}`` topic (a snapshot, then deltas).

Protocol facts (Bybit v5 docs, "Connect" and "Orderbook"):

* ``wss://stream.bybit.com/v5/public/spot``; ``{"req_id": "1", "op": "subscribe", "args":
  ["orderbook.50.ETHBTC", …]}`` with at most 10 args per request on spot, acknowledged with
  ``{"success": true, "ret_msg": "subscribe", "conn_id": …, "req_id": "1", "op":
  "subscribe"}``; a refusal has ``"success": false`` and the reason in ``ret_msg``.
* Data ``{"topic": …, "type": "snapshot"|"delta", "ts": …, "data": {"s": "ETHBTC", "b":
  [["px", "sz"], …], "a": […], "u": N, "seq": M}, "cts": …}``. Size "0" deletes a level. A
  snapshot (first after subscribing, or re-sent after a problem on Bybit's side) replaces
  the book; ``u == 1`` is a snapshot after a service restart, whatever its ``type``.
* ``u`` is the topic's update id, "normally consecutive" (the Chinese edition of the
  Orderbook page; the SBE edition: "monotonic per symbol, useful to check continuity"). So a
  delta must carry the previous ``u`` + 1: a gap, a duplicate or an out-of-order delta all
  break that, and the symbol is resynced (``seq``, a cross sequence, is not continuous).
* Client ping ``{"req_id": …, "op": "ping"}``, answered on spot with ``{"success": true,
  "ret_msg": "pong", "conn_id": …, "op": "ping"}``; Bybit recommends one every 20 s and cuts
  a connection with neither pings nor data after 10 minutes. There is no reconnect notice.

A resync unsubscribes and resubscribes the one topic on the same connection: Bybit sends a
fresh snapshot after every successful subscribe.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from aggtrio.model import PriceLevel
from aggtrio.symbols import venue_pair
from aggtrio.venues.base import (
    AdapterEvent,
    MalformedMessageError,
    Resync,
    Subscribed,
    VenueAdapter,
    VenueError,
    load_json_object,
)
from aggtrio.venues.delta import DeltaBooks, NumberMemo, check_snapshot

PATH = "/v5/public/spot"
# The book depths spot serves as snapshot-then-delta topics (level 1 is snapshot-only).
TOPIC_DEPTHS = (50, 200, 1000)
# Spot refuses a subscribe request with more args than this.
MAX_ARGS_PER_REQUEST = 10
HEARTBEAT = orjson.dumps({"req_id": "ping", "op": "ping"}).decode()


def topic_depth(depth: int) -> int:
    """The shallowest orderbook topic that holds `depth` levels (the deepest if none does)."""
    return next((levels for levels in TOPIC_DEPTHS if levels >= depth), TOPIC_DEPTHS[-1])


class BybitAdapter(VenueAdapter):
    name: ClassVar[str] = "bybit"
    # The base endpoint, as for every venue (--venue-url takes scheme, host and port only).
    default_url: ClassVar[str] = "wss://stream.bybit.com"
    # A quiet book sends nothing: liveness rests on pongs, three heartbeats unanswered.
    default_liveness_timeout: ClassVar[float] = 15.0
    # Bybit asks for at least one ping per 20 s; more often notices a dead link sooner.
    heartbeat_interval: ClassVar[float | None] = 5.0

    def __init__(self, symbols: Sequence[str], depth: int) -> None:
        super().__init__(symbols, depth)
        self.topic_levels = topic_depth(depth)
        self._topic_of = {
            symbol: f"orderbook.{self.topic_levels}.{venue_pair(self.name, symbol)}"
            for symbol in self.symbols
        }
        self._symbol_by_topic = {topic: symbol for symbol, topic in self._topic_of.items()}
        self._books = DeltaBooks(self.name, depth)
        self._numbers = NumberMemo()
        # The `u` of the last message applied, per synced symbol.
        self._last_update: dict[str, int] = {}
        # Symbols whose subscribe was acknowledged and whose snapshot has not come yet: the
        # next data message must be that snapshot.
        self._snapshot_due: set[str] = set()
        # Requests sent and not yet answered: req_id -> (op, symbols).
        self._requests: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._request_ids = itertools.count(1)

    def connect_url(self, base_url: str) -> str:
        base = base_url.rstrip("/")
        # A bare host gets the spot path; a URL with a path of its own (testnet, a proxy)
        # is taken as it is.
        if "/" in base.partition("://")[2]:
            return base
        return base + PATH

    def subscribe_messages(self) -> list[str]:
        symbols = self.symbols
        return [
            self._request("subscribe", symbols[start : start + MAX_ARGS_PER_REQUEST])
            for start in range(0, len(symbols), MAX_ARGS_PER_REQUEST)
        ]

    def resubscribe_messages(self, symbol: str) -> list[str]:
        return [self._request("unsubscribe", (symbol,)), self._request("subscribe", (symbol,))]

    def heartbeat_message(self) -> str:
        return HEARTBEAT

    def _request(self, op: str, symbols: Sequence[str]) -> str:
        request_id = str(next(self._request_ids))
        self._requests[request_id] = (op, tuple(symbols))
        args = [self._topic_of[symbol] for symbol in symbols]
        return orjson.dumps({"req_id": request_id, "op": op, "args": args}).decode()

    # -- receiving -----------------------------------------------------------------------

    def handle_message(self, message: str | bytes, recv_ns: int) -> list[AdapterEvent]:
        envelope = load_json_object(message)
        topic = envelope.get("topic")
        if topic is None:
            return self._reply(envelope)
        symbol = self._symbol_by_topic.get(topic) if type(topic) is str else None
        if symbol is None:
            raise MalformedMessageError(f"data for a topic we did not subscribe: {topic!r:.60}")
        data = envelope.get("data")
        if type(data) is not dict:
            raise MalformedMessageError("data message without a data object")
        update = data.get("u")
        if type(update) is not int or update < 1:
            raise MalformedMessageError(f"update id {update!r:.40} is not a positive integer")
        kind = envelope.get("type")
        if kind == "snapshot" or update == 1:  # u == 1: a snapshot after a service restart
            return self._snapshot(symbol, data, update, recv_ns)
        if kind != "delta":
            raise MalformedMessageError(f"unknown data type {kind!r:.40}")
        return self._delta(symbol, data, update, recv_ns)

    def _snapshot(
        self, symbol: str, data: dict[str, Any], update: int, recv_ns: int
    ) -> list[AdapterEvent]:
        levels = self.topic_levels
        bids = self._levels(data.get("b"), "bids")[:levels]
        asks = self._levels(data.get("a"), "asks")[:levels]
        check_snapshot(bids, asks)
        self._books.snapshot(symbol, bids, asks)
        self._last_update[symbol] = update
        self._snapshot_due.discard(symbol)
        return self._books.publish(symbol, recv_ns)

    def _delta(
        self, symbol: str, data: dict[str, Any], update: int, recv_ns: int
    ) -> list[AdapterEvent]:
        # The whole message is checked before any of it is applied.
        bid_changes = self._levels(data.get("b"), "bids")
        ask_changes = self._levels(data.get("a"), "asks")
        book = self._books.book(symbol)
        if book is None:
            if symbol in self._snapshot_due:
                # Subscribed, yet a delta came first: the snapshot was lost or refused.
                self._snapshot_due.discard(symbol)
                return [Resync(symbol, f"delta u={update} before any snapshot")]
            return []  # the old subscription's tail, before a resubscribe takes effect
        expected = self._last_update[symbol] + 1
        if update != expected:
            what = "gap" if update > expected else "duplicate or out-of-order delta"
            return self._books.break_(symbol, f"{what}: u={update}, expected {expected}")
        book.apply(bid_changes, ask_changes)
        # Bybit deletes levels that leave the subscribed depth; trimming costs nothing if it
        # did, and keeps stale deep levels out of the book if it did not.
        book.truncate(self.topic_levels)
        self._last_update[symbol] = update
        return self._books.publish(symbol, recv_ns)

    def _levels(self, raw: object, side: str) -> list[PriceLevel]:
        """A side's ``[price, amount]`` texts as floats: prices positive, amounts >= 0.

        The hot path: consecutive messages repeat most prices and amounts, so a text seen
        before costs one dict lookup (``float()`` is the main cost of a level otherwise).
        Anything unusual takes the checked path, which says exactly what is wrong.
        """
        if type(raw) is not list:
            raise MalformedMessageError(f"{side} is not a list")
        known, number = self._numbers.known, self._numbers.number
        levels: list[PriceLevel] = []
        append = levels.append
        try:
            for entry in raw:
                if type(entry) is not list:
                    raise TypeError("not a list")
                price_text, amount_text = entry
                # An unhashable text (a list) makes get() raise TypeError: checked path.
                price = known(price_text)
                if price is None:
                    price = number(price_text)
                amount = known(amount_text)
                if amount is None:
                    amount = number(amount_text)
                if not price:
                    raise ValueError("zero price")
                append((price, amount))
        except (TypeError, ValueError):
            return self._checked_levels(raw, side)
        return levels

    def _checked_levels(self, raw: list[Any], side: str) -> list[PriceLevel]:
        """The slow path of _levels: says exactly what is wrong."""
        levels: list[PriceLevel] = []
        for entry in raw:
            if not isinstance(entry, list) or len(entry) != 2:
                raise MalformedMessageError(
                    f"{side} level {entry!r:.60} is not a [price, amount] pair"
                )
            if not isinstance(entry[0], str) or not isinstance(entry[1], str):
                raise MalformedMessageError(f"{side} level {entry!r:.60} does not hold strings")
            try:
                price, amount = self._numbers.number(entry[0]), self._numbers.number(entry[1])
            except ValueError:
                raise MalformedMessageError(
                    f"{side} level {entry!r:.60} is not a finite number >= 0"
                ) from None
            if not price:
                raise MalformedMessageError(f"{side} level {entry!r:.60} has a zero price")
            levels.append((price, amount))
        return levels

    def _reply(self, reply: dict[str, Any]) -> list[AdapterEvent]:
        """A response to one of our requests: an ack, a refusal or a pong."""
        op = reply.get("op")
        success = reply.get("success")
        request_id = reply.get("req_id")
        request = self._requests.pop(request_id, None) if type(request_id) is str else None
        if success is False:
            about = f" ({', '.join(request[1])})" if request else ""
            return [VenueError(f"bybit {op!r:.40} failed{about}: {reply.get('ret_msg')!r:.200}")]
        if op == "pong" or (success is True and op in ("ping", "unsubscribe")):
            return []  # pongs (spot's, and the other streams' shape) and unsubscribe acks
        if success is True and op == "subscribe":
            if request is None or request[0] != "subscribe":
                return []  # an ack we cannot attribute: the data will tell
            symbols = [s for s in request[1] if s in self._topic_of]
            self._snapshot_due.update(s for s in symbols if not self._books.synced(s))
            return [Subscribed(symbol) for symbol in symbols]
        raise MalformedMessageError(f"unexpected message: op {op!r:.40}, success {success!r:.10}")
