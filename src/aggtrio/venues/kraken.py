"""Kraken: the WebSocket v2 ``book`` channel (a snapshot, then level updates, each with a CRC32).

Kraken sends no sequence numbers: continuity rests on the checksum that comes with every
snapshot and update, a CRC32 over the top 10 levels of each side *as decimal text* (asks low
to high, then bids high to low; each price and qty with the ``.`` removed and leading zeros
stripped). The text must carry the pair's full precision, trailing zeros included, so prices
and quantities are kept as the text on the wire, not only as floats: the message is decoded
with the standard library's JSON decoder, whose number hooks keep that text. orjson cannot
keep it; the decoder costs about 5 us more per small update (measured: 7 us against 2 us
for a two-level update), a fraction of the ~30 us the whole update takes on a busy box.

Kraken's book guide says the numbers carry full precision on the wire, yet its own examples
print ``0.566`` for a four-decimal pair. So each symbol's price and qty decimals are learned
(the most seen in its numbers) and shorter numbers are padded with zeros; a checksum that
still mismatches is retried with up to :data:`MAX_EXTRA_DECIMALS` more decimals before it
counts as a break, so a book whose numbers never showed the full precision still validates.
The ``instrument`` channel would state the precision, but it is one large message covering
every pair on every connection, and the checksum already tells which precision is right.

A lost or out-of-order update shows as a checksum mismatch: one Resync, then the symbol is
unsubscribed and subscribed again on the same connection for a fresh snapshot. A duplicated
update re-sets the same absolute quantities: it changes nothing, so the checksum cannot show
it and nothing needs fixing.

After each update the book is cut to the subscribed depth (Kraken sends no delete for
levels pushed out of it); the whole subscribed book is kept so a deleted top level is
refilled from below.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, ClassVar

import orjson

from aggtrio.book import BookSide, DeltaBook
from aggtrio.symbols import venue_pair
from aggtrio.venues.base import (
    AdapterEvent,
    MalformedMessageError,
    Subscribed,
    VenueAdapter,
    VenueError,
)
from aggtrio.venues.delta import DeltaBooks, check_snapshot

# The depths Kraken's book channel offers, and the levels per side its checksum covers.
SUBSCRIPTION_DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10
# How many decimals beyond those seen a mismatching checksum is retried with.
MAX_EXTRA_DECIMALS = 4
_CRC_RANGE = 2**32


def subscription_depth(depth: int) -> int:
    """The smallest depth Kraken offers that covers `depth` levels (at most 1000)."""
    return next((d for d in SUBSCRIPTION_DEPTHS if d >= depth), SUBSCRIPTION_DEPTHS[-1])


class _Number(str):
    """The text of a JSON number, told apart from a JSON string (Kraken sends numbers)."""

    __slots__ = ()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


_DECODER = json.JSONDecoder(parse_float=_Number, parse_int=_Number, parse_constant=_reject_constant)


def _decode(message: str | bytes) -> dict[str, Any]:
    try:
        text = message if isinstance(message, str) else message.decode()
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError included
        raise MalformedMessageError(f"invalid JSON: {exc}") from None
    if type(value) is not dict:
        raise MalformedMessageError("message is not a JSON object")
    return value


def _plain(text: str) -> str:
    """A JSON number's text in plain notation (``1E-5`` -> ``0.00001``)."""
    if "e" in text or "E" in text:
        return format(Decimal(text), "f")
    return text


def _decimals(text: str) -> int:
    dot = text.find(".")
    return 0 if dot < 0 else len(text) - dot - 1


def _digits(text: str, decimals: int) -> str:
    """``text`` as the checksum spells it at `decimals` decimals: padded with zeros, the
    ``.`` removed, leading zeros stripped (``0.0539`` at 5 -> ``5390``)."""
    whole, _, fraction = text.partition(".")
    return (whole + fraction + "0" * (decimals - len(fraction))).lstrip("0")


# One level of a message: price, qty, and their texts in plain notation.
Level = tuple[float, float, str, str]
# One side's texts per price: (price text, qty text, checksum digits).
Texts = dict[float, tuple[str, str, str]]


def _number(text: object, what: str, *, zero_ok: bool) -> tuple[float, str]:
    """A price or qty and its text in plain notation; zero only where it deletes."""
    if type(text) is not _Number:
        raise MalformedMessageError(f"{what} {text!r:.40} is not a JSON number")
    value = float(text)
    if not (0.0 <= value < math.inf if zero_ok else 0.0 < value < math.inf):
        raise MalformedMessageError(f"{what} {text!r:.40} is out of range")
    return value, _plain(text)


def _levels(raw: object, side: str) -> list[Level]:
    if type(raw) is not list:
        raise MalformedMessageError(f"{side} is not a list")
    levels: list[Level] = []
    for entry in raw:
        if type(entry) is not dict:
            raise MalformedMessageError(f"{side} level {entry!r:.60} is not an object")
        price, price_text = _number(entry.get("price"), f"{side} price", zero_ok=False)
        qty, qty_text = _number(entry.get("qty"), f"{side} qty", zero_ok=True)
        levels.append((price, qty, price_text, qty_text))
    return levels


class _SymbolTexts:
    """The wire text of every level of one symbol's book, and the decimals it is checked at.

    Consecutive updates repeat most prices and quantities, so each text's checksum digits
    are remembered (until the decimals change): an update then costs a dict lookup per
    number instead of string surgery.
    """

    __slots__ = (
        "_price_digits",
        "_qty_digits",
        "asks",
        "bids",
        "price_decimals",
        "qty_decimals",
        "stale",
    )

    def __init__(self) -> None:
        self.bids: Texts = {}
        self.asks: Texts = {}
        self.price_decimals = 0
        self.qty_decimals = 0
        # Set when a number showed more decimals than known: every level needs respelling.
        self.stale = False
        self._price_digits: dict[str, str] = {}
        self._qty_digits: dict[str, str] = {}

    def learn(self, levels: list[Level]) -> None:
        """Widen the decimals to those of a snapshot's `levels`."""
        price_decimals, qty_decimals = self.price_decimals, self.qty_decimals
        for _, _, price_text, qty_text in levels:
            price_decimals = max(price_decimals, _decimals(price_text))
            qty_decimals = max(qty_decimals, _decimals(qty_text))
        self.set_decimals(price_decimals, qty_decimals)

    def set_decimals(self, price_decimals: int, qty_decimals: int) -> None:
        if (price_decimals, qty_decimals) != (self.price_decimals, self.qty_decimals):
            self.price_decimals, self.qty_decimals = price_decimals, qty_decimals
            self._price_digits.clear()
            self._qty_digits.clear()
            self.stale = True

    def spell(self, price_text: str, qty_text: str) -> tuple[str, str, str]:
        """A level's texts with its checksum digits at the current decimals (a positive
        number's digits are never empty, so `or` only falls through on a miss)."""
        digits = self._price_digits.get(price_text) or self._new_price(price_text)
        digits += self._qty_digits.get(qty_text) or self._new_qty(qty_text)
        return price_text, qty_text, digits

    def _new_price(self, text: str) -> str:
        if _decimals(text) > self.price_decimals:
            self.set_decimals(_decimals(text), self.qty_decimals)
        return _remember(self._price_digits, text, _digits(text, self.price_decimals))

    def _new_qty(self, text: str) -> str:
        if _decimals(text) > self.qty_decimals:
            self.set_decimals(self.price_decimals, _decimals(text))
        return _remember(self._qty_digits, text, _digits(text, self.qty_decimals))

    def respell(self) -> None:
        """Recompute every level's checksum digits (after the decimals changed)."""
        while self.stale:  # respelling may meet a number with more decimals still
            self.stale = False
            for texts in (self.bids, self.asks):
                for price, (price_text, qty_text, _) in texts.items():
                    texts[price] = self.spell(price_text, qty_text)

    def replace(self, bids: list[Level], asks: list[Level]) -> None:
        """Start afresh from a snapshot's levels (which have no zero qty)."""
        spell = self.spell
        self.bids = {price: spell(p_text, q_text) for price, _, p_text, q_text in bids}
        self.asks = {price: spell(p_text, q_text) for price, _, p_text, q_text in asks}

    def apply(self, side: BookSide, texts: Texts, levels: list[Level]) -> None:
        """Apply one side's updates, in order, to the book side and its texts."""
        spell = self.spell
        for price, qty, price_text, qty_text in levels:
            side.set(price, qty)
            if qty:
                texts[price] = spell(price_text, qty_text)
            else:
                texts.pop(price, None)

    def checksum(self, book: DeltaBook) -> int:
        asks, bids = self.asks, self.bids
        parts = [asks[price][2] for price, _ in book.asks.top(CHECKSUM_LEVELS)]
        parts += [bids[price][2] for price, _ in book.bids.top(CHECKSUM_LEVELS)]
        return zlib.crc32("".join(parts).encode())

    def recalibrate(self, book: DeltaBook, expected: int) -> bool:
        """Whether a few more decimals make the checksum match; if so, keep them."""
        top_asks = book.asks.top(CHECKSUM_LEVELS)
        top_bids = book.bids.top(CHECKSUM_LEVELS)
        levels = [self.asks[price] for price, _ in top_asks]
        levels += [self.bids[price] for price, _ in top_bids]
        for extra_price, extra_qty in itertools.product(range(MAX_EXTRA_DECIMALS + 1), repeat=2):
            pd, qd = self.price_decimals + extra_price, self.qty_decimals + extra_qty
            text = "".join(_digits(p, pd) + _digits(q, qd) for p, q, _ in levels)
            if zlib.crc32(text.encode()) == expected:
                self.set_decimals(pd, qd)
                self.respell()
                return True
        return False


# Texts a symbol remembers the digits of before it starts afresh (a few MB at most).
DIGITS_MEMO_LIMIT = 50_000


def _remember(memo: dict[str, str], text: str, digits: str) -> str:
    if len(memo) >= DIGITS_MEMO_LIMIT:
        memo.clear()
    memo[text] = digits
    return digits


def _truncate(side: BookSide, texts: Texts, depth: int) -> None:
    if len(side) > depth:
        for price in side.prices()[depth:]:
            texts.pop(price, None)
        side.truncate(depth)


class KrakenAdapter(VenueAdapter):
    name: ClassVar[str] = "kraken"
    # The base endpoint, as configured for every venue; connect_url adds the /v2 path.
    default_url: ClassVar[str] = "wss://ws.kraken.com"
    # Kraken sends a heartbeat every second while subscribed: five missed is stale.
    default_liveness_timeout: ClassVar[float] = 5.0
    # The ping is answered even before a subscription exists; Kraken does not require it.
    heartbeat_interval: ClassVar[float | None] = 10.0

    def __init__(self, symbols: Sequence[str], depth: int) -> None:
        super().__init__(symbols, depth)
        self._symbol_by_pair = {venue_pair(self.name, s): s for s in self.symbols}
        self._pair_by_symbol = {s: p for p, s in self._symbol_by_pair.items()}
        self.subscription_depth = subscription_depth(depth)
        self._books = DeltaBooks(self.name, depth)
        self._texts: dict[str, _SymbolTexts] = {s: _SymbolTexts() for s in self.symbols}
        self._request_ids = itertools.count(1)

    def connect_url(self, base_url: str) -> str:
        """The v2 endpoint, ``wss://ws.kraken.com/v2`` by default (a base that already ends
        in ``/v2`` is taken as it is)."""
        base = base_url.rstrip("/")
        return base if base.endswith("/v2") else base + "/v2"

    def _request(self, method: str, pairs: list[str], **params: object) -> str:
        body = {"channel": "book", "symbol": pairs, "depth": self.subscription_depth, **params}
        return orjson.dumps(
            {"method": method, "params": body, "req_id": next(self._request_ids)}
        ).decode()

    def subscribe_messages(self) -> list[str]:
        return [self._request("subscribe", list(self._symbol_by_pair), snapshot=True)]

    def resubscribe_messages(self, symbol: str) -> list[str]:
        pair = [self._pair_by_symbol[symbol]]
        return [
            self._request("unsubscribe", pair),
            self._request("subscribe", pair, snapshot=True),
        ]

    def heartbeat_message(self) -> str:
        return '{"method":"ping"}'

    def handle_message(self, message: str | bytes, recv_ns: int) -> list[AdapterEvent]:
        envelope = _decode(message)
        channel = envelope.get("channel")
        if channel == "book":
            return self._book(envelope, recv_ns)
        if channel == "heartbeat":
            return []
        if channel == "status":
            return self._status(envelope)
        method = envelope.get("method")
        if method == "pong":
            return []
        if "success" in envelope:
            return self._response(envelope, method)
        raise MalformedMessageError(
            f"unexpected message (channel {channel!r:.40}, method {method!r:.40})"
        )

    def _status(self, envelope: dict[str, Any]) -> list[AdapterEvent]:
        data = envelope.get("data")
        if type(data) is not list:
            raise MalformedMessageError("status message without a data list")
        systems = [entry.get("system") for entry in data if type(entry) is dict]
        # Kraken closes connections for maintenance itself; a reconnect asked for here would
        # only meet the same status, so anything but "online" is reported, not acted on.
        return [
            VenueError(f"kraken system status: {system!r:.40}")
            for system in systems
            if system != "online"
        ]

    def _response(self, envelope: dict[str, Any], method: object) -> list[AdapterEvent]:
        success = envelope.get("success")
        if success is False:
            return [
                VenueError(
                    f"kraken {method!r:.20} failed: {envelope.get('error')!r:.200} "
                    f"(symbol {envelope.get('symbol')!r:.40})"
                )
            ]
        if success is not True:
            raise MalformedMessageError(f"response with success {success!r:.20}")
        result = envelope.get("result")
        if method == "subscribe" and type(result) is dict and result.get("channel") == "book":
            pair = result.get("symbol")
            symbol = self._symbol_by_pair.get(pair) if type(pair) is str else None
            if symbol is not None:
                return [Subscribed(symbol)]
        return []  # an unsubscribe done, or an ack for something this adapter did not ask

    def _book(self, envelope: dict[str, Any], recv_ns: int) -> list[AdapterEvent]:
        kind = envelope.get("type")
        if kind not in ("snapshot", "update"):
            raise MalformedMessageError(f"book message of type {kind!r:.40}")
        data = envelope.get("data")
        if type(data) is not list or not data:
            raise MalformedMessageError("book message without data")
        snapshot = kind == "snapshot"
        # Every entry is checked before any is applied: a bad message leaves books untouched.
        entries = [self._entry(entry, snapshot) for entry in data]
        events: list[AdapterEvent] = []
        for symbol, bids, asks, checksum in entries:
            if snapshot:
                events += self._snapshot(symbol, bids, asks, checksum, recv_ns)
            else:
                events += self._update(symbol, bids, asks, checksum, recv_ns)
        return events

    def _entry(self, entry: object, snapshot: bool) -> tuple[str, list[Level], list[Level], int]:
        if type(entry) is not dict:
            raise MalformedMessageError("book data entry is not an object")
        pair = entry.get("symbol")
        symbol = self._symbol_by_pair.get(pair) if type(pair) is str else None
        if symbol is None:
            raise MalformedMessageError(f"book data for a pair we did not subscribe: {pair!r:.40}")
        bids = _levels(entry.get("bids"), "bids")
        asks = _levels(entry.get("asks"), "asks")
        checksum = entry.get("checksum")
        if type(checksum) is not _Number or not checksum.isdigit() or int(checksum) >= _CRC_RANGE:
            raise MalformedMessageError(f"checksum {checksum!r:.40} is not a CRC32")
        if snapshot:
            check_snapshot(bids, asks)
        return symbol, bids, asks, int(checksum)

    def _snapshot(
        self, symbol: str, bids: list[Level], asks: list[Level], checksum: int, recv_ns: int
    ) -> list[AdapterEvent]:
        texts = self._texts[symbol]
        texts.learn(bids)
        texts.learn(asks)
        texts.replace(bids, asks)
        texts.stale = False  # every level was just spelled at the learned decimals
        book = self._books.snapshot(
            symbol, [level[:2] for level in bids], [level[:2] for level in asks]
        )
        return self._settle(symbol, book, texts, checksum, recv_ns)

    def _update(
        self, symbol: str, bids: list[Level], asks: list[Level], checksum: int, recv_ns: int
    ) -> list[AdapterEvent]:
        book = self._books.book(symbol)
        if book is None:
            return []  # awaiting the snapshot that follows a resync
        texts = self._texts[symbol]
        texts.apply(book.bids, texts.bids, bids)
        texts.apply(book.asks, texts.asks, asks)
        if texts.stale:  # a number with more decimals than known: respell the rest
            texts.respell()
        return self._settle(symbol, book, texts, checksum, recv_ns)

    def _settle(
        self, symbol: str, book: DeltaBook, texts: _SymbolTexts, checksum: int, recv_ns: int
    ) -> list[AdapterEvent]:
        """Cut the book to the subscribed depth, check it, and publish its top."""
        depth = self.subscription_depth
        _truncate(book.bids, texts.bids, depth)
        _truncate(book.asks, texts.asks, depth)
        ours = texts.checksum(book)
        if ours != checksum and not texts.recalibrate(book, checksum):
            return self._books.break_(
                symbol, f"checksum mismatch: kraken sent {checksum}, the book gives {ours}"
            )
        return self._books.publish(symbol, recv_ns)
