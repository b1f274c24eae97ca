"""What every venue adapter provides, and the level parsing they share.

Adapters are sans-IO (the h11 / wsproto style): they know a venue's URL, the messages to send
on connect and as heartbeat, and how to turn one received message into zero or more events.
They never touch a socket; `aggtrio.feed` does the I/O for all of them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import attrs
import orjson

from aggtrio.model import PriceLevel, VenueBook


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


AdapterEvent = VenueBook | ReconnectRequested | Subscribed | VenueError


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


def load_json_object(message: str | bytes) -> dict[str, Any]:
    """Decode a venue message that must be a JSON object."""
    try:
        value = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessageError(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedMessageError("message is not a JSON object")
    return value


def parse_side(raw: object, depth: int, *, descending: bool, side: str) -> tuple[PriceLevel, ...]:
    """Convert the first `depth` ``[price, amount]`` string pairs of one book side to floats.

    Only the levels that can reach the merged top-`depth` are converted (float() on strings is
    the dominant parsing cost). Prices and amounts must be finite and positive, and prices
    strictly ordered best-first; anything else makes the whole message malformed.
    """
    if not isinstance(raw, list):
        raise MalformedMessageError(f"{side} is not a list")
    levels: list[PriceLevel] = []
    previous = math.inf if descending else -math.inf
    for entry in raw[:depth]:
        if not isinstance(entry, list) or len(entry) < 2:
            raise MalformedMessageError(f"{side} level {entry!r:.60} is not a [price, amount] pair")
        price_text, amount_text = entry[0], entry[1]
        if not isinstance(price_text, str) or not isinstance(amount_text, str):
            raise MalformedMessageError(f"{side} level {entry!r:.60} does not hold strings")
        try:
            price = float(price_text)
            amount = float(amount_text)
        except ValueError:
            raise MalformedMessageError(f"{side} level {entry!r:.60} is not numeric") from None
        if not (0.0 < price < math.inf and 0.0 < amount < math.inf):
            raise MalformedMessageError(f"{side} level {entry!r:.60} is not positive and finite")
        if (price >= previous) if descending else (price <= previous):
            raise MalformedMessageError(f"{side} prices are not strictly best-first")
        previous = price
        levels.append((price, amount))
    return tuple(levels)


def check_book(bids: tuple[PriceLevel, ...], asks: tuple[PriceLevel, ...]) -> None:
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
