"""The single task that owns every symbol's merged book and publishes summaries.

Venue events arrive on one bounded memory channel, so the merged state needs no locks. A
Summary is built and serialized once per change of the merged top-N and shared by every
subscriber of that symbol.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Mapping, Sequence

import attrs
import trio

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.broadcast import Broadcast
from aggtrio.merge import MergedLevel, MergedSide, TaggedBook, merge_tagged, spread, tag_levels
from aggtrio.model import BookEvent, VenueBook, VenueDown

log = logging.getLogger(__name__)


@attrs.frozen(slots=True)
class PublishedSummary:
    """One merged view, serialized once.

    purerpc calls ``SerializeToString()`` on whatever a handler yields, so every subscriber
    sends these same bytes without re-encoding.
    """

    symbol: str
    bids: MergedSide
    asks: MergedSide
    spread: float
    arrival_time: int
    # Venues whose book for this symbol is live (merged), sorted.
    live_exchanges: tuple[str, ...]
    payload: bytes

    def SerializeToString(self) -> bytes:
        return self.payload


# Encoded levels a SummaryEncoder remembers before it starts afresh (a few MB at most).
LEVEL_CACHE_LIMIT = 20_000


class SummaryEncoder:
    """Serializes Summaries, encoding each distinct level once.

    Building a Summary from Python values costs more than everything else in a publish
    (STACK.md), yet consecutive summaries share most of their levels. Protobuf's encoding of
    a message is the concatenation of its fields' encodings, and a repeated field's is the
    concatenation of its elements', so each level is encoded once, by protobuf itself, as a
    one-element ``bids`` or ``asks`` field, and a summary is the pieces joined in field
    order. The result is byte for byte ``Summary(...).SerializeToString()`` (tests check it).
    """

    __slots__ = ("_asks", "_bids", "_live", "_spreads", "_templates")

    def __init__(self) -> None:
        self._bids: dict[MergedLevel, bytes] = {}
        self._asks: dict[MergedLevel, bytes] = {}
        # A one-level Summary per side, refilled for each new level: setting three fields
        # costs less than building a message (0.6 us against 1.6).
        self._templates = {"bids": Summary(), "asks": Summary()}
        for field, template in self._templates.items():
            getattr(template, field).add()
        self._live: dict[tuple[str, ...], bytes] = {}
        # Spreads are whole ticks apart, so the same few values come back again and again.
        self._spreads: dict[float, bytes] = {}

    def encode(
        self,
        bids: MergedSide,
        asks: MergedSide,
        spread_value: float,
        arrival: int,
        live_exchanges: tuple[str, ...] = (),
    ) -> bytes:
        if len(self._bids) + len(self._asks) + len(self._spreads) > LEVEL_CACHE_LIMIT:
            self._bids.clear()
            self._asks.clear()
            self._spreads.clear()
        known_bid, known_ask = self._bids.get, self._asks.get
        # An encoded level is never empty, so `or` only falls through on a miss.
        parts = [known_bid(level) or self._new_level(level, "bids") for level in bids]
        parts += [known_ask(level) or self._new_level(level, "asks") for level in asks]
        parts.append(self._live.get(live_exchanges) or self._new_live(live_exchanges))
        parts.append(Summary(arrival_time=arrival).SerializeToString())
        spread_piece = self._spreads.get(spread_value) or self._new_spread(spread_value)
        return spread_piece + b"".join(parts)

    def _new_level(self, level: MergedLevel, field: str) -> bytes:
        template = self._templates[field]
        encoded = getattr(template, field)[0]
        encoded.exchange, encoded.price, encoded.amount = level
        piece: bytes = template.SerializeToString()
        (self._bids if field == "bids" else self._asks)[level] = piece
        return piece

    def _new_spread(self, spread_value: float) -> bytes:
        piece: bytes = Summary(spread=spread_value).SerializeToString()
        # Not 0.0 and -0.0 (equal as keys, yet encoded differently) nor NaN (never equal
        # to itself, so it would be stored again each time).
        if spread_value > 0.0 or spread_value < 0.0:
            self._spreads[spread_value] = piece
        return piece

    def _new_live(self, live_exchanges: tuple[str, ...]) -> bytes:
        # Empty when no venue is live: b"" is falsy, so that case is simply re-encoded.
        piece: bytes = Summary(live_exchanges=live_exchanges).SerializeToString()
        self._live[live_exchanges] = piece
        return piece


# Upper bounds (seconds) of the receipt-to-publish latency buckets: a publish normally takes
# tens of microseconds, a backed-up event queue milliseconds.
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_LATENCY_BOUNDS_NS = tuple(round(bound * 1e9) for bound in LATENCY_BUCKETS)


class LatencyHistogram:
    """Counts of receipt-to-publish latencies per bucket, for the metrics endpoint.

    prometheus-client's Histogram.observe costs ~2 us (a lock, a float and a bucket scan),
    for each publish on the hot path; this costs ~0.3 us (README "Metrics").
    `counts[i]` holds the latencies up to LATENCY_BUCKETS[i] not counted before it, and
    the last holds the rest.
    """

    __slots__ = ("counts", "sum_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BOUNDS_NS) + 1)
        self.sum_ns = 0

    def observe_ns(self, latency_ns: int) -> None:
        self.counts[bisect.bisect_left(_LATENCY_BOUNDS_NS, latency_ns)] += 1
        self.sum_ns += latency_ns


class _SymbolBook:
    """Every live venue's latest top-N for one symbol, and what was last published for it."""

    __slots__ = ("latency", "live", "published", "published_count", "tagged")

    def __init__(self) -> None:
        # Each live venue's top levels, tagged with its name, in venue-name order (the
        # order merge_tagged needs); `live` is the names, kept in step.
        self.tagged: dict[str, TaggedBook] = {}
        self.live: tuple[str, ...] = ()
        # The merged sides and live venues last published: a change of either is news.
        self.published: tuple[MergedSide, MergedSide, tuple[str, ...]] | None = None
        self.published_count = 0
        self.latency = LatencyHistogram()

    def update(self, venue: str, tagged: TaggedBook) -> bool:
        """Take `venue`'s new top levels; True if the venue was not live before."""
        joins = venue not in self.tagged
        self.tagged[venue] = tagged
        if joins:  # rare, so re-sorting here keeps every merge free of it
            self._reorder()
        return joins

    def remove(self, venue: str) -> bool:
        if self.tagged.pop(venue, None) is None:
            return False
        self._reorder()
        return True

    def _reorder(self) -> None:
        self.live = tuple(sorted(self.tagged))
        self.tagged = {venue: self.tagged[venue] for venue in self.live}


class Aggregator:
    def __init__(
        self,
        symbols: Sequence[str],
        depth: int,
        broadcasts: Mapping[str, Broadcast[PublishedSummary]],
    ) -> None:
        self.depth = depth
        self._books = {symbol: _SymbolBook() for symbol in symbols}
        self._broadcasts = broadcasts
        self._encoder = SummaryEncoder()
        # Whether every symbol has at least one live venue (the gRPC health status); the
        # value changes only when a venue joins or leaves a symbol's book.
        self.all_symbols_live = Broadcast[bool]()
        self.all_symbols_live.publish(False)

    def live_venues(self, symbol: str) -> tuple[str, ...]:
        return self._books[symbol].live

    @property
    def summaries_published(self) -> int:
        """Summaries published over all symbols."""
        return sum(book.published_count for book in self._books.values())

    def published_count(self, symbol: str) -> int:
        """Summaries published for `symbol` (changes only, not the quiet-symbol resends)."""
        return self._books[symbol].published_count

    def latency(self, symbol: str) -> LatencyHistogram:
        """Receipt-to-publish latency of `symbol`'s summaries."""
        return self._books[symbol].latency

    def apply(self, event: BookEvent) -> None:
        """Fold one venue event into the merged state; publish every symbol it changed."""
        if isinstance(event, VenueBook):
            book = self._books.get(event.symbol)
            if book is None:
                log.debug("ignoring %s book for unconfigured symbol %s", event.venue, event.symbol)
                return
            if book.update(event.venue, tag_levels(event, self.depth)):
                self._check_all_live()
            self._publish_if_changed(event.symbol, book, event.recv_ns)
        else:
            self._venue_down(event)

    def _venue_down(self, event: VenueDown) -> None:
        for symbol in event.symbols:
            book = self._books.get(symbol)
            if book is not None and book.remove(event.venue):
                self._check_all_live()
                self._publish_if_changed(symbol, book, event.at_ns)

    def _check_all_live(self) -> None:
        all_live = all(book.live for book in self._books.values())
        if all_live != self.all_symbols_live.latest:
            self.all_symbols_live.publish(all_live)

    def _publish_if_changed(self, symbol: str, book: _SymbolBook, arrival: int) -> None:
        bids, asks = merge_tagged(list(book.tagged.values()), self.depth)
        live = book.live
        published = (bids, asks, live)
        if published == book.published:
            return
        book.published = published
        spread_value = spread(bids, asks)
        payload = self._encoder.encode(bids, asks, spread_value, arrival, live)
        self._broadcasts[symbol].publish(
            PublishedSummary(symbol, bids, asks, spread_value, arrival, live, payload)
        )
        book.published_count += 1
        book.latency.observe_ns(time.time_ns() - arrival)

    async def run(self, events: trio.MemoryReceiveChannel[BookEvent]) -> None:
        async with events:
            async for event in events:
                self.apply(event)
