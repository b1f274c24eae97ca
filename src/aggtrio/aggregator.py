"""The single task that owns every symbol's merged book and publishes summaries.

Venue events arrive on one bounded memory channel, so the merged state needs no locks. A
Summary is built and serialized once per change of the merged top-N and shared by every
subscriber of that symbol.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import attrs
import trio

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.broadcast import Broadcast
from aggtrio.merge import MergedSide, merge_books, spread
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


def encode_summary(
    bids: MergedSide,
    asks: MergedSide,
    spread_value: float,
    arrival: int,
    live_exchanges: Sequence[str] = (),
) -> bytes:
    summary = Summary(spread=spread_value, arrival_time=arrival, live_exchanges=live_exchanges)
    add_bid = summary.bids.add
    for exchange, price, amount in bids:
        add_bid(exchange=exchange, price=price, amount=amount)
    add_ask = summary.asks.add
    for exchange, price, amount in asks:
        add_ask(exchange=exchange, price=price, amount=amount)
    payload: bytes = summary.SerializeToString()
    return payload


class _SymbolBook:
    """Every live venue's latest top-N for one symbol, and what was last published for it."""

    __slots__ = ("published", "venues")

    def __init__(self) -> None:
        self.venues: dict[str, VenueBook] = {}
        # The merged sides and live venues last published: a change of either is news.
        self.published: tuple[MergedSide, MergedSide, tuple[str, ...]] | None = None


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
        self.summaries_published = 0

    def live_venues(self, symbol: str) -> tuple[str, ...]:
        return tuple(sorted(self._books[symbol].venues))

    def apply(self, event: BookEvent) -> None:
        """Fold one venue event into the merged state; publish every symbol it changed."""
        if isinstance(event, VenueBook):
            book = self._books.get(event.symbol)
            if book is None:
                log.debug("ignoring %s book for unconfigured symbol %s", event.venue, event.symbol)
                return
            book.venues[event.venue] = event
            self._publish_if_changed(event.symbol, book, event.recv_ns)
        else:
            self._venue_down(event)

    def _venue_down(self, event: VenueDown) -> None:
        for symbol in event.symbols:
            book = self._books.get(symbol)
            if book is not None and book.venues.pop(event.venue, None) is not None:
                self._publish_if_changed(symbol, book, event.at_ns)

    def _publish_if_changed(self, symbol: str, book: _SymbolBook, arrival: int) -> None:
        bids, asks = merge_books(book.venues.values(), self.depth)
        live = tuple(sorted(book.venues))
        published = (bids, asks, live)
        if published == book.published:
            return
        book.published = published
        spread_value = spread(bids, asks)
        payload = encode_summary(bids, asks, spread_value, arrival, live)
        self._broadcasts[symbol].publish(
            PublishedSummary(symbol, bids, asks, spread_value, arrival, live, payload)
        )
        self.summaries_published += 1

    async def run(self, events: trio.MemoryReceiveChannel[BookEvent]) -> None:
        async with events:
            async for event in events:
                self.apply(event)
