"""Fixtures: in-process simulated venues, `aggtrio serve` against them, grpcio client code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import AsyncIterator, Iterator
from types import ModuleType

import pytest
import trio

from aggtrio.simulator import BinanceSimulator, BitstampSimulator, Market, SimulatedVenue

from .harness import ROOT, ServerProcess, start_server, venue_url_args


@pytest.fixture
async def simulators(nursery: trio.Nursery) -> dict[str, SimulatedVenue]:
    market = Market(seed=42)
    sims: dict[str, SimulatedVenue] = {
        "binance": BinanceSimulator(market, seed=1),
        "bitstamp": BitstampSimulator(market, seed=2),
    }
    for sim in sims.values():
        await nursery.start(sim.serve)
    return sims


@pytest.fixture
async def server(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> AsyncIterator[ServerProcess]:
    proc = await start_server(nursery, ["--symbols", "ETHBTC,BTCUSDT", *venue_url_args(simulators)])
    yield proc
    await proc.stop_and_check()


@pytest.fixture(scope="session")
def grpcio_modules(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ModuleType, ModuleType]]:
    """grpcio client code generated from protos/orderbook.proto, as any user would."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("grpcio_client")
    assert (
        protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{ROOT / 'protos'}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                str(ROOT / "protos" / "orderbook.proto"),
            ]
        )
        == 0
    )
    sys.path.insert(0, str(out))
    try:
        yield (
            importlib.import_module("orderbook_pb2"),
            importlib.import_module("orderbook_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))
