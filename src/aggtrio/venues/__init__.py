"""Venue adapters, by wire name."""

from __future__ import annotations

from aggtrio.venues.base import VenueAdapter
from aggtrio.venues.binance import BinanceAdapter
from aggtrio.venues.bitstamp import BitstampAdapter
from aggtrio.venues.bybit import BybitAdapter
from aggtrio.venues.coinbase import CoinbaseAdapter
from aggtrio.venues.kraken import KrakenAdapter
from aggtrio.venues.okx import OkxAdapter

ADAPTERS: dict[str, type[VenueAdapter]] = {
    adapter.name: adapter
    for adapter in (
        BinanceAdapter,
        BitstampAdapter,
        KrakenAdapter,
        CoinbaseAdapter,
        OkxAdapter,
        BybitAdapter,
    )
}
DEFAULT_VENUES: tuple[str, ...] = ("binance", "bitstamp")

__all__ = ["ADAPTERS", "DEFAULT_VENUES", "VenueAdapter"]
