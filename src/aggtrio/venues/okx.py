"""OKX v5 public ``books`` channel: a 400-level snapshot, then the changes every 100 ms.

Wire facts (OKX API v5 docs, "WS / Order book channel", "Connect", "Notification"):

* ``{"op": "subscribe", "args": [{"channel": "books", "instId": "ETH-BTC"}, …]}`` on
  ``/ws/v5/public``; each channel is acked with ``{"event": "subscribe", "arg": {…},
  "connId": …}``, a refusal is ``{"event": "error", "code": "60018", "msg": …}`` (it names
  no channel, so it cannot be tied to a symbol).
* ``{"arg": {…}, "action": "snapshot" | "update", "data": [{"asks": [[px, sz, "0",
  orders], …], "bids": […], "ts": …, "checksum": 0, "prevSeqId": …, "seqId": …}]}``; a
  size of ``"0"`` deletes the level.
* Continuity: every update's ``prevSeqId`` is the ``seqId`` of the message before it. Two
  documented exceptions follow the same rule: after ~60 s without changes OKX sends an
  update with empty sides and ``seqId == prevSeqId`` (a keep-alive), and after maintenance
  ``seqId`` may restart *below* ``prevSeqId``. So the chain is checked by identity only.
* ``checksum`` is always 0 now (docs still describe a CRC32): it is not checked.
* Idle connections are closed after 30 s: the client sends the text ``ping`` (not JSON) and
  gets the text ``pong``. ``{"event": "notice", "code": "64008"}`` warns of a disconnect for
  a service upgrade, 60 s ahead: reconnect.
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
    MalformedMessageError,
    ReconnectRequested,
    Resync,
    Subscribed,
    VenueAdapter,
    VenueError,
    load_json_object,
)
from aggtrio.venues.delta import DeltaBooks, NumberMemo, check_snapshot

CHANNEL = "books"
PATH = "/ws/v5/public"
PING = "ping"
PONGS = ("pong", b"pong")
# The levels OKX keeps per side on this channel: a book never needs more.
BOOK_LEVELS = 400
SERVICE_UPGRADE_NOTICE = "64008"


class OkxAdapter(VenueAdapter):
    name: ClassVar[str] = "okx"
    default_url: ClassVar[str] = "wss://ws.okx.com:8443"
    # OKX closes a connection idle for 30 s; a ping every 5 s keeps it busy, and three
    # unanswered pings mean the connection is dead (a quiet book may be silent for 60 s).
    heartbeat_interval: ClassVar[float | None] = 5.0
    default_liveness_timeout: ClassVar[float] = 15.0

    def __init__(self, symbols: Sequence[str], depth: int) -> None:
        super().__init__(symbols, depth)
        self._symbol_by_inst = {venue_pair(self.name, s): s for s in self.symbols}
        self._inst_by_symbol = {s: inst for inst, s in self._symbol_by_inst.items()}
        self._books = DeltaBooks(self.name, depth)
        # The seqId of the last message applied, per synced symbol.
        self._seq: dict[str, int] = {}
        # Symbols whose subscribe was acked and whose snapshot has not come yet: the next
        # book message must be that snapshot; a delta instead means the snapshot was lost (or
        # malformed) and none will come on its own. Deltas of a symbol neither synced nor due
        # (still in flight from the old subscription, before the ack) are dropped.
        self._snapshot_due: set[str] = set()
        self._numbers = NumberMemo()

    # -- what to send ------------------------------------------------------------------

    def connect_url(self, base_url: str) -> str:
        return base_url.rstrip("/") + PATH

    def subscribe_messages(self) -> list[str]:
        # One request for every symbol: OKX allows 480 (un)subscribe requests per hour.
        return [self._request("subscribe", self.symbols)]

    def resubscribe_messages(self, symbol: str) -> list[str]:
        # OKX sends a snapshot on subscribe; unsubscribing first makes it a new subscription.
        return [self._request("unsubscribe", (symbol,)), self._request("subscribe", (symbol,))]

    def heartbeat_message(self) -> str:
        return PING

    def _request(self, op: str, symbols: Sequence[str]) -> str:
        args = [{"channel": CHANNEL, "instId": self._inst_by_symbol[s]} for s in symbols]
        return orjson.dumps({"op": op, "args": args}).decode()

    # -- what arrives ------------------------------------------------------------------

    def handle_message(self, message: str | bytes, recv_ns: int) -> list[AdapterEvent]:
        if message in PONGS:  # a tuple: == on a long message stops at its length
            return []  # the answer to our ping: the feed already counted it as liveness
        envelope = load_json_object(message)
        action = envelope.get("action")
        if action is None:
            return self._control(envelope)
        symbol = self._symbol_of(envelope.get("arg"))
        if symbol is None:
            raise MalformedMessageError(
                f"book data for a channel we did not subscribe: {envelope.get('arg')!r:.80}"
            )
        data = envelope.get("data")
        if type(data) is not list or not data:
            raise MalformedMessageError("book message without a data list")
        if action == "update":
            return self._updates(symbol, data, recv_ns)
        if action == "snapshot":
            return self._snapshot(symbol, data, recv_ns)
        raise MalformedMessageError(f"unknown book action {action!r:.40}")

    def _symbol_of(self, arg: object) -> str | None:
        if type(arg) is not dict or arg.get("channel") != CHANNEL:
            return None
        inst = arg.get("instId")
        return self._symbol_by_inst.get(inst) if type(inst) is str else None

    def _control(self, envelope: dict[str, Any]) -> list[AdapterEvent]:
        event = envelope.get("event")
        if event == "subscribe":
            symbol = self._symbol_of(envelope.get("arg"))
            if symbol is None:
                return []
            if not self._books.synced(symbol):
                self._snapshot_due.add(symbol)
            return [Subscribed(symbol)]
        if event == "unsubscribe":
            return []
        if event == "error":
            return [VenueError(f"okx error {envelope.get('code')}: {envelope.get('msg')!r:.200}")]
        if event == "notice":
            code, text = envelope.get("code"), envelope.get("msg")
            if code == SERVICE_UPGRADE_NOTICE:
                return [ReconnectRequested(f"okx notice {code}: {text!s:.200}")]
            return [VenueError(f"okx notice {code}: {text!r:.200}")]
        raise MalformedMessageError(
            f"message is neither book data nor a known event: {event!r:.60}"
        )

    def _snapshot(self, symbol: str, data: list[Any], recv_ns: int) -> list[AdapterEvent]:
        bids, asks, seq = self._checked_snapshot(data)
        self._snapshot_due.discard(symbol)
        self._books.snapshot(symbol, bids, asks).truncate(BOOK_LEVELS)
        self._seq[symbol] = seq
        return self._books.publish(symbol, recv_ns)

    def _checked_snapshot(self, data: list[Any]) -> tuple[list[PriceLevel], list[PriceLevel], int]:
        if len(data) != 1:
            raise MalformedMessageError(f"a snapshot holds {len(data)} books, not one")
        body = _body(data[0])
        _prev, seq = _sequence(body)
        bids = self._levels(body.get("bids"), "bids")
        asks = self._levels(body.get("asks"), "asks")
        check_snapshot(bids, asks)
        return bids, asks, seq

    def _updates(self, symbol: str, data: list[Any], recv_ns: int) -> list[AdapterEvent]:
        # Every book in the message is checked before any is applied.
        updates = []
        for entry in data:
            body = _body(entry)
            prev, seq = _sequence(body)
            updates.append(
                (
                    prev,
                    seq,
                    self._levels(body.get("bids"), "bids"),
                    self._levels(body.get("asks"), "asks"),
                )
            )
        book = self._books.book(symbol)
        if book is None:
            if symbol not in self._snapshot_due:
                return []  # deltas of the old subscription: moot
            self._snapshot_due.discard(symbol)
            return [Resync(symbol, "an update came where the snapshot should have")]
        last = self._seq[symbol]
        for prev, seq, bids, asks in updates:
            if prev != last:
                # A gap, a repeated or a reordered update: the book missed something.
                del self._seq[symbol]
                return self._books.break_(symbol, f"prevSeqId {prev} does not follow seqId {last}")
            # seq == prev is a keep-alive, seq < prev a reset after maintenance: both chain.
            last = seq
            book.apply(bids, asks)
        self._seq[symbol] = last
        # OKX deletes levels that leave its 400-level window; if one is ever missed, it must
        # not linger (or grow the book) below the levels the venue still vouches for.
        book.truncate(BOOK_LEVELS)
        return self._books.publish(symbol, recv_ns)

    def _levels(self, raw: object, side: str) -> list[PriceLevel]:
        """``[[px, sz, "0", orders], …]`` as (price, size) floats; a size of 0 deletes."""
        if type(raw) is not list:
            raise MalformedMessageError(f"{side} is not a list")
        known, number = self._numbers.known, self._numbers.number
        try:
            # `known(t) or number(t)`: 0.0 is falsy, so a "0" size is simply re-parsed.
            levels = [
                (known(level[0]) or number(level[0]), known(level[1]) or number(level[1]))
                for level in raw
                if type(level) is list
            ]
        except (TypeError, ValueError, IndexError):
            levels = []  # the checked path below says exactly what is wrong
        if len(levels) != len(raw):
            self._explain(raw, side)
        for price, _ in levels:
            if not price:
                raise MalformedMessageError(f"{side} has a level priced 0")
        return levels

    @staticmethod
    def _explain(raw: list[Any], side: str) -> None:
        for level in raw:
            if type(level) is not list or len(level) < 2:
                raise MalformedMessageError(f"{side} level {level!r:.60} is not [px, sz, …]")
            for text in level[:2]:
                if type(text) is not str:
                    raise MalformedMessageError(f"{side} level {level!r:.60} does not hold strings")
                try:
                    value = float(text)
                except ValueError:
                    raise MalformedMessageError(
                        f"{side} level {level!r:.60} is not numeric"
                    ) from None
                if not 0.0 <= value < math.inf:
                    raise MalformedMessageError(
                        f"{side} level {level!r:.60} is negative or not finite"
                    )
        raise MalformedMessageError(f"{side} levels are malformed")


def _body(entry: object) -> dict[str, Any]:
    if type(entry) is not dict:
        raise MalformedMessageError("book data entry is not an object")
    return entry


def _sequence(body: dict[str, Any]) -> tuple[int, int]:
    prev, seq = body.get("prevSeqId"), body.get("seqId")
    if type(prev) is not int or type(seq) is not int:
        raise MalformedMessageError(f"prevSeqId {prev!r:.30} / seqId {seq!r:.30} are not integers")
    if seq < 0 or prev < -1:
        raise MalformedMessageError(f"prevSeqId {prev} / seqId {seq} are out of range")
    return prev, seq
