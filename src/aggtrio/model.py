"""Small immutable value types shared by every layer (adapters, feed, aggregator)."""

from __future__ import annotations

import attrs

# One price level: (price, amount). Plain tuples: they are built per message on the hot path.
PriceLevel = tuple[float, float]


@attrs.frozen(slots=True)
class VenueBook:
    """The top of one venue's book for one symbol, as of one received message.

    ``bids`` are best (highest) first, ``asks`` best (lowest) first; each side holds at most
    the configured depth. ``recv_ns`` is the wall-clock time (ns since the epoch) at which
    the message that produced this book was received.
    """

    venue: str
    symbol: str
    bids: tuple[PriceLevel, ...]
    asks: tuple[PriceLevel, ...]
    recv_ns: int


@attrs.frozen(slots=True)
class VenueDown:
    """A venue's data for these symbols can no longer be trusted (disconnected, stale, resync)."""

    venue: str
    symbols: tuple[str, ...]
    reason: str
    at_ns: int


BookEvent = VenueBook | VenueDown
