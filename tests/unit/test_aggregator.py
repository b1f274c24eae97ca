"""The aggregator: publishes only on change, drops down venues, encodes the wire format."""

from __future__ import annotations

import math

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.aggregator import Aggregator, PublishedSummary
from aggtrio.broadcast import Broadcast
from aggtrio.model import VenueBook, VenueDown


def make(
    symbols: tuple[str, ...] = ("ETHBTC",), depth: int = 10
) -> tuple[Aggregator, dict[str, Broadcast[PublishedSummary]]]:
    broadcasts = {s: Broadcast[PublishedSummary]() for s in symbols}
    return Aggregator(symbols, depth, broadcasts), broadcasts


def vb(venue: str, bid: float, ask: float, recv_ns: int = 1, symbol: str = "ETHBTC") -> VenueBook:
    return VenueBook(venue, symbol, ((bid, 1.0),), ((ask, 2.0),), recv_ns)


def decode(summary: PublishedSummary) -> Summary:
    message = Summary()
    message.ParseFromString(summary.SerializeToString())
    return message


def test_published_bytes_decode_to_the_merged_book() -> None:
    aggregator, broadcasts = make()
    aggregator.apply(vb("binance", 10.0, 11.0, recv_ns=111))
    aggregator.apply(vb("bitstamp", 10.5, 11.5, recv_ns=222))
    summary = broadcasts["ETHBTC"].latest
    assert summary is not None
    message = decode(summary)
    assert [(lvl.exchange, lvl.price, lvl.amount) for lvl in message.bids] == [
        ("bitstamp", 10.5, 1.0),
        ("binance", 10.0, 1.0),
    ]
    assert [(lvl.exchange, lvl.price, lvl.amount) for lvl in message.asks] == [
        ("binance", 11.0, 2.0),
        ("bitstamp", 11.5, 2.0),
    ]
    assert message.spread == 0.5
    assert list(message.live_exchanges) == ["binance", "bitstamp"]
    # arrival_time is when the message behind this summary was received.
    assert message.arrival_time == 222


def test_publishes_only_when_the_merged_view_changes() -> None:
    aggregator, broadcasts = make(depth=1)
    aggregator.apply(vb("binance", 10.0, 11.0))
    assert broadcasts["ETHBTC"].version == 1
    aggregator.apply(vb("binance", 10.0, 11.0, recv_ns=5))  # same book again
    assert broadcasts["ETHBTC"].version == 1
    aggregator.apply(vb("bitstamp", 9.0, 12.0))  # worse: top-1 unchanged, but a venue came live
    assert broadcasts["ETHBTC"].version == 2
    aggregator.apply(vb("bitstamp", 9.1, 12.0))  # still worse than binance: no news
    assert broadcasts["ETHBTC"].version == 2
    aggregator.apply(vb("bitstamp", 10.2, 12.0))  # better bid: changes the top
    assert broadcasts["ETHBTC"].version == 3


def test_summaries_name_the_live_venues_even_when_they_are_not_in_the_top() -> None:
    aggregator, broadcasts = make(depth=1)
    aggregator.apply(vb("bitstamp", 9.0, 12.0))
    aggregator.apply(vb("binance", 10.0, 11.0))
    message = decode(broadcasts["ETHBTC"].latest)  # type: ignore[arg-type]
    assert {lvl.exchange for lvl in [*message.bids, *message.asks]} == {"binance"}
    assert list(message.live_exchanges) == ["binance", "bitstamp"]
    aggregator.apply(VenueDown("binance", ("ETHBTC",), "stale", 7))
    message = decode(broadcasts["ETHBTC"].latest)  # type: ignore[arg-type]
    assert list(message.live_exchanges) == ["bitstamp"]
    assert broadcasts["ETHBTC"].latest.live_exchanges == ("bitstamp",)  # type: ignore[union-attr]


def test_venue_down_removes_its_levels_at_once() -> None:
    aggregator, broadcasts = make(symbols=("ETHBTC", "BTCUSDT"))
    aggregator.apply(vb("binance", 10.0, 11.0))
    aggregator.apply(vb("bitstamp", 10.5, 11.5))
    aggregator.apply(vb("bitstamp", 90.0, 91.0, symbol="BTCUSDT"))
    aggregator.apply(VenueDown("bitstamp", ("ETHBTC", "BTCUSDT"), "connection closed", 999))
    eth = decode(broadcasts["ETHBTC"].latest)  # type: ignore[arg-type]
    assert {lvl.exchange for lvl in [*eth.bids, *eth.asks]} == {"binance"}
    assert eth.arrival_time == 999
    btc = decode(broadcasts["BTCUSDT"].latest)  # type: ignore[arg-type]
    # Nothing left: an empty book is published, with NaN spread, rather than a stale one.
    assert list(btc.bids) == []
    assert list(btc.asks) == []
    assert math.isnan(btc.spread)
    assert list(btc.live_exchanges) == []
    assert aggregator.live_venues("ETHBTC") == ("binance",)


def test_down_for_a_venue_without_data_publishes_nothing() -> None:
    aggregator, broadcasts = make()
    aggregator.apply(vb("binance", 10.0, 11.0))
    aggregator.apply(VenueDown("bitstamp", ("ETHBTC",), "refused", 5))
    assert broadcasts["ETHBTC"].version == 1


def test_books_for_unconfigured_symbols_are_ignored() -> None:
    aggregator, broadcasts = make()
    aggregator.apply(vb("binance", 10.0, 11.0, symbol="XRPUSDT"))
    assert broadcasts["ETHBTC"].version == 0
