"""Run several simulated venues side by side around one shared market."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import trio

from aggtrio.simulator.binance import BinanceSimulator
from aggtrio.simulator.bitstamp import BitstampSimulator
from aggtrio.simulator.bybit import BybitSimulator
from aggtrio.simulator.coinbase import CoinbaseSimulator
from aggtrio.simulator.kraken import KrakenSimulator
from aggtrio.simulator.market import Market
from aggtrio.simulator.okx import OkxSimulator
from aggtrio.simulator.venue import SimulatedVenue

logger = logging.getLogger(__name__)


class SimulatorClass(Protocol):
    """A simulator class: each has its own keyword options, all with defaults."""

    def __call__(self, market: Market, *, seed: int | None = None) -> SimulatedVenue: ...


SIMULATORS: dict[str, SimulatorClass] = {
    "binance": BinanceSimulator,
    "bitstamp": BitstampSimulator,
    "kraken": KrakenSimulator,
    "coinbase": CoinbaseSimulator,
    "okx": OkxSimulator,
    "bybit": BybitSimulator,
}

# Where `aggtrio simulate` listens by default, one fixed port per venue, so that commands
# and compose files written against it keep working as venues are added.
DEFAULT_PORTS: dict[str, int] = {
    "binance": 9001,
    "bitstamp": 9002,
    "kraken": 9003,
    "coinbase": 9004,
    "okx": 9005,
    "bybit": 9006,
}


def make_simulator(name: str, market: Market, *, seed: int | None = None) -> SimulatedVenue:
    """A simulator for venue ``name`` (a key of SIMULATORS) with its defaults."""
    try:
        cls = SIMULATORS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(SIMULATORS))
        raise ValueError(f"no simulator for venue {name!r} (known: {known})") from None
    return cls(market, seed=seed)


async def run_simulators(
    venues: Mapping[str, int],
    *,
    host: str = "127.0.0.1",
    seed: int | None = None,
    task_status: trio.TaskStatus[dict[str, SimulatedVenue]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the named simulators on the given ports (0 = any free port) around one market.

    Reports ``{name: venue}`` (each with its bound ``port`` and ``url``) once all listen,
    then runs until cancelled. Unknown names raise ValueError before anything starts.
    """
    market = Market(seed)
    ports = {name.lower(): port for name, port in venues.items()}
    simulators = {name: make_simulator(name, market) for name in ports}
    async with trio.open_nursery() as nursery:
        for name, venue in simulators.items():
            await nursery.start(venue.serve, host, ports[name])
        task_status.started(simulators)
        logger.info(
            "simulators ready: %s",
            ", ".join(f"{name}={venue.url}" for name, venue in simulators.items()),
        )
