"""The venue process: simulated Binance and Bitstamp at the rates a benchmark asks for.

Run as ``python -m aggtrio.bench.venues --binance-interval S --binance-updates N
--bitstamp-updates N``; reports ``ready`` with both base URLs, answers ``stats`` with the
data messages each venue has sent, and exits when its standard input closes.
"""

from __future__ import annotations

import argparse

import attrs
import trio

from aggtrio.bench.child import commands, emit
from aggtrio.simulator import BinanceSimulator, BitstampSimulator, Market, SimulatedVenue


@attrs.frozen
class VenueRates:
    """How fast the simulated venues talk (per symbol)."""

    name: str
    # Seconds between Binance pushes (it pushes the top 20 each time, changed or not).
    binance_interval: float
    binance_updates: float  # Binance book changes per second
    bitstamp_updates: float  # Bitstamp changes per second, each one message

    def args(self) -> list[str]:
        return [
            f"--binance-interval={self.binance_interval}",
            f"--binance-updates={self.binance_updates}",
            f"--bitstamp-updates={self.bitstamp_updates}",
        ]

    def messages_per_second(self) -> float:
        return 1.0 / self.binance_interval + self.bitstamp_updates


# Binance's depth20@100ms pushes every 100 ms; Bitstamp's ETH/BTC book changes ~20 times
# a second on a busy day.
REALISTIC = VenueRates("realistic", 0.1, 10.0, 20.0)
TEN_TIMES = VenueRates("10x", 0.01, 100.0, 200.0)


async def run(rates: VenueRates, seed: int) -> None:
    market = Market(seed)
    venues: dict[str, SimulatedVenue] = {
        "binance": BinanceSimulator(
            market,
            seed=seed,
            interval=rates.binance_interval,
            updates_per_second=rates.binance_updates,
        ),
        "bitstamp": BitstampSimulator(
            market, seed=seed + 1, updates_per_second=rates.bitstamp_updates
        ),
    }
    async with trio.open_nursery() as nursery:
        for venue in venues.values():
            await nursery.start(venue.serve)
        emit("ready", urls={name: venue.url for name, venue in venues.items()})
        async for command in commands():
            cmd = command.get("cmd")
            if cmd == "stats":
                emit("stats", sent={name: v.data_messages_sent for name, v in venues.items()})
            elif cmd in ("freeze", "unfreeze"):
                for venue in venues.values():
                    venue.freeze() if cmd == "freeze" else venue.unfreeze()
                emit(f"{cmd}d")
            else:
                emit("error", message=f"unknown command {command}")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m aggtrio.bench.venues")
    parser.add_argument("--binance-interval", type=float, required=True)
    parser.add_argument("--binance-updates", type=float, required=True)
    parser.add_argument("--bitstamp-updates", type=float, required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rates = VenueRates("custom", args.binance_interval, args.binance_updates, args.bitstamp_updates)
    trio.run(run, rates, args.seed)


if __name__ == "__main__":
    main()
