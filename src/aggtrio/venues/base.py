"""What every venue adapter provides, and the level parsing they share.

Adapters are sans-IO (the h11 / wsproto style): they know a venue's URL, the messages to send
on connect and as heartbeat, and how to turn one received message into zero or more events.
They never touch a socket; `aggtrio.feed` does the I/O for all of them.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import attrs
import orjson
import simdjson

from aggtrio.model import PriceLevel, VenueBook

# One side of a venue's book: (price, amount) levels, best first.
Side = tuple[PriceLevel, ...]


class MalformedMessageError(ValueError):
    """A venue message that cannot be understood; the feed logs and counts it, then moves on."""


class CrossedBookError(MalformedMessageError):
    """A venue's own best bid reaches its best ask: that update is dropped, not merged."""


@attrs.frozen(slots=True)
class ReconnectRequested:
    """The venue asked us to reconnect (maintenance, connection age limit)."""

    reason: str


@attrs.frozen(slots=True)
class Subscribed:
    """The venue confirmed a subscription."""

    symbol: str


@attrs.frozen(slots=True)
class VenueError:
    """The venue reported an error on this connection (a rejected subscribe, a bad request)."""

    message: str


@attrs.frozen(slots=True)
class Resync:
    """The venue's book for `symbol` can no longer be trusted (a sequence gap, a checksum
    mismatch, an out-of-order delta): it leaves the merged book and is subscribed afresh.

    The adapter emits this once per break and ignores the symbol's deltas until a new
    snapshot arrives; the feed reports the symbol down and sends `resubscribe_messages`.
    """

    symbol: str
    reason: str


AdapterEvent = VenueBook | ReconnectRequested | Subscribed | VenueError | Resync


class VenueAdapter(ABC):
    """Protocol logic for one venue connection carrying one or more symbols."""

    name: ClassVar[str]
    default_url: ClassVar[str]
    # How long the connection may go without any message before it is declared stale.
    default_liveness_timeout: ClassVar[float]
    # Seconds between application-level heartbeats; None when the venue needs none.
    heartbeat_interval: ClassVar[float | None] = None

    def __init__(self, symbols: Sequence[str], depth: int) -> None:
        if not symbols:
            raise ValueError("an adapter needs at least one symbol")
        self.symbols = tuple(symbols)
        self.depth = depth

    @abstractmethod
    def connect_url(self, base_url: str) -> str:
        """The full URL to open, given the venue's base endpoint (scheme, host, port)."""

    @abstractmethod
    def subscribe_messages(self) -> list[str]:
        """Messages to send right after connecting (may be empty)."""

    def resubscribe_messages(self, symbol: str) -> list[str]:
        """Messages that bring a fresh snapshot of `symbol` on this connection, after a
        Resync. Empty (the default) means the venue cannot do that: the feed reconnects."""
        return []

    def heartbeat_message(self) -> str | None:
        """The application-level heartbeat to send every `heartbeat_interval` seconds."""
        return None

    # Seconds after which the venue drops a connection (Binance: 24 h); the feed replaces
    # the connection shortly before, make-before-break. None when there is no such limit.
    max_connection_age: ClassVar[float | None] = None

    def for_new_connection(self) -> Self:
        """A fresh adapter with this one's configuration and no per-connection state.

        Each connection gets its own, because two overlap while one hands over to the next.
        """
        return type(self)(self.symbols, self.depth)

    @abstractmethod
    def handle_message(self, message: str | bytes, recv_ns: int) -> list[AdapterEvent]:
        """Turn one received message into events; raise MalformedMessageError if it is bad."""


def lazy_json_object(message: str | bytes) -> simdjson.Object:
    """Validate a whole venue message, building Python values only for the parts read.

    For large messages of which a few parts are used (Bitstamp's 100 levels a side, of
    which the top `depth` count): simdjson checks all of it at a fraction of the cost of
    turning it all into Python objects. A fresh parser per message, so no proxy that
    outlives its message (say, in a logged exception) can block the next parse.
    """
    try:
        document = simdjson.Parser().parse(message)
    except (ValueError, RuntimeError) as exc:
        # ValueError: not JSON, or not UTF-8; RuntimeError: valid JSON that simdjson will
        # not represent, such as an integer beyond 64 bits (none belongs in a book message).
        raise MalformedMessageError(f"invalid JSON: {exc}") from None
    if not isinstance(document, simdjson.Object):
        raise MalformedMessageError("message is not a JSON object")
    return document


def top_entries(value: object, depth: int) -> object:
    """A lazily parsed book side's first `depth` entries as plain lists; other values as
    plain Python values, for LevelParser to reject with the exact reason."""
    if isinstance(value, simdjson.Array):
        return value[:depth]
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


def load_json_object(message: str | bytes) -> dict[str, Any]:
    """Decode a venue message that must be a JSON object."""
    try:
        value = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessageError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedMessageError("message is not a JSON object")
    return value


# Texts a LevelParser remembers before it starts afresh: a few minutes of a busy book's
# prices and amounts, a few MB at most.
LEVEL_MEMO_LIMIT = 50_000
_PRICE = operator.itemgetter(0)


class LevelParser:
    """Converts one side's ``[price, amount]`` string pairs to floats, best first.

    ``float()`` on the texts is the dominant cost of parsing a book, and consecutive messages
    repeat almost every price and amount, so each text that converted to a valid number is
    remembered. Anything unusual takes the checked path, which says exactly what is wrong.
    Only the first `depth` levels are converted: nothing deeper can reach the merged top.
    """

    __slots__ = ("_memo",)

    def __init__(self) -> None:
        self._memo: dict[str, float] = {}

    def side(self, raw: object, depth: int, descending: bool, side: str) -> Side:
        """Prices and amounts must be finite and positive, prices strictly ordered best-first;
        anything else makes the whole message malformed."""
        known, number = self._memo.get, self._number
        try:
            top = raw[:depth]  # type: ignore[index]
            # 0.0 is never remembered (not positive), so `or` only falls through on a miss.
            levels = tuple(
                [
                    (known(price) or number(price), known(amount) or number(amount))
                    for price, amount in top
                ]
            )
        except (TypeError, ValueError):
            # Not a list of pairs, or a bad number: the checked path says exactly what.
            return self._checked(raw, depth, descending, side)
        prices = list(map(_PRICE, levels))
        if not all(map(operator.gt if descending else operator.lt, prices, prices[1:])):
            raise MalformedMessageError(f"{side} prices are not strictly best-first")
        return levels

    def _number(self, text: object) -> float:
        if type(text) is not str:
            raise TypeError("not a string")
        value = float(text)
        if not 0.0 < value < math.inf:
            raise ValueError("not positive and finite")
        memo = self._memo
        if len(memo) >= LEVEL_MEMO_LIMIT:
            memo.clear()
        memo[text] = value
        return value

    def _checked(self, raw: object, depth: int, descending: bool, side: str) -> Side:
        if not isinstance(raw, list):
            raise MalformedMessageError(f"{side} is not a list")
        levels: list[PriceLevel] = []
        previous = math.inf if descending else -math.inf
        for entry in raw[:depth]:
            if not isinstance(entry, list) or len(entry) < 2:
                raise MalformedMessageError(
                    f"{side} level {entry!r:.60} is not a [price, amount] pair"
                )
            price_text, amount_text = entry[0], entry[1]
            if not isinstance(price_text, str) or not isinstance(amount_text, str):
                raise MalformedMessageError(f"{side} level {entry!r:.60} does not hold strings")
            try:
                price = float(price_text)
                amount = float(amount_text)
            except ValueError:
                raise MalformedMessageError(f"{side} level {entry!r:.60} is not numeric") from None
            if not (0.0 < price < math.inf and 0.0 < amount < math.inf):
                raise MalformedMessageError(
                    f"{side} level {entry!r:.60} is not positive and finite"
                )
            if (price >= previous) if descending else (price <= previous):
                raise MalformedMessageError(f"{side} prices are not strictly best-first")
            previous = price
            levels.append((price, amount))
        return tuple(levels)


class BookTops:
    """Turns each symbol's raw top-`depth` levels into a checked venue book, redoing only
    what changed: a side whose raw levels equal the last accepted ones is reused as is,
    and a message whose top did not change at all yields nothing (most of Binance's
    100 ms pushes; Bitstamp's 100-level messages whose change lies deeper)."""

    __slots__ = ("_last", "_levels", "depth")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._levels = LevelParser()
        # Per symbol: (raw bids, raw asks, bids, asks) last accepted.
        self._last: dict[str, tuple[object, object, Side, Side]] = {}

    def update(self, symbol: str, raw_bids: object, raw_asks: object) -> tuple[Side, Side] | None:
        """The symbol's new (bids, asks), or None if its top is unchanged; raises
        MalformedMessageError (and forgets nothing) if a side or the book is bad."""
        last = self._last.get(symbol)
        same_bids = last is not None and raw_bids == last[0]
        same_asks = last is not None and raw_asks == last[1]
        if same_bids and same_asks:
            return None
        side = self._levels.side
        bids = last[2] if last and same_bids else side(raw_bids, self.depth, True, "bids")
        asks = last[3] if last and same_asks else side(raw_asks, self.depth, False, "asks")
        check_book(bids, asks)
        self._last[symbol] = (raw_bids, raw_asks, bids, asks)
        return bids, asks


def check_book(bids: Side, asks: Side) -> None:
    """A venue's whole top of book must have both sides and must not cross itself.

    The pairs served are liquid: an empty side is a broken message, not a market.
    """
    if not bids or not asks:
        raise MalformedMessageError(
            "book has no bids or asks" if not bids and not asks else "book is one-sided"
        )
    if bids[0][0] >= asks[0][0]:
        raise CrossedBookError(
            f"book is crossed: best bid {bids[0][0]!r} >= best ask {asks[0][0]!r}"
        )
