"""Local exchange simulators that speak the venues' real WebSocket protocols.

Used by ``python -m aggtrio demo``/``simulate`` and by the integration tests::

    market = Market(seed=1)
    binance = BinanceSimulator(market)
    port = await nursery.start(binance.serve)   # then connect to binance.url
"""

from aggtrio.simulator.binance import BinanceSimulator, parse_stream, stream_name
from aggtrio.simulator.bitstamp import BitstampSimulator, channel_name, parse_channel
from aggtrio.simulator.market import Market, MovingBook, SymbolSpec, symbol_spec
from aggtrio.simulator.runner import SIMULATORS, make_simulator, run_simulators
from aggtrio.simulator.venue import SimBook, SimulatedVenue

__all__ = [
    "SIMULATORS",
    "BinanceSimulator",
    "BitstampSimulator",
    "Market",
    "MovingBook",
    "SimBook",
    "SimulatedVenue",
    "SymbolSpec",
    "channel_name",
    "make_simulator",
    "parse_channel",
    "parse_stream",
    "run_simulators",
    "stream_name",
    "symbol_spec",
]
