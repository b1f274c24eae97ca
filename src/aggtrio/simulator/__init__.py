"""Local exchange simulators that speak the venues' real WebSocket protocols.

Used by ``python -m aggtrio demo``/``simulate`` and by the integration tests::

    market = Market(seed=1)
    binance = BinanceSimulator(market)
    port = await nursery.start(binance.serve)   # then connect to binance.url
"""

from aggtrio.simulator.binance import BinanceSimulator, parse_stream, stream_name
from aggtrio.simulator.bitstamp import BitstampSimulator, channel_name, parse_channel
from aggtrio.simulator.chaos import Injection, run_chaos
from aggtrio.simulator.market import Market, MovingBook, SymbolSpec, symbol_spec
from aggtrio.simulator.runner import SIMULATORS, make_simulator, run_simulators
from aggtrio.simulator.venue import MALFORMED_KINDS, SimBook, SimulatedVenue

__all__ = [
    "MALFORMED_KINDS",
    "SIMULATORS",
    "BinanceSimulator",
    "BitstampSimulator",
    "Injection",
    "Market",
    "MovingBook",
    "SimBook",
    "SimulatedVenue",
    "SymbolSpec",
    "channel_name",
    "make_simulator",
    "parse_channel",
    "parse_stream",
    "run_chaos",
    "run_simulators",
    "stream_name",
    "symbol_spec",
]
