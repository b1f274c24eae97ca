"""``aggtrio demo``: simulated venues, the real service wired to them, and the live view.

Everything runs in one process on loopback, so it works with no network. The server listens
on a normal port, so ``aggtrio watch`` or any gRPC client can join from another terminal.
"""

from __future__ import annotations

import functools

import trio

from aggtrio.app import run_service
from aggtrio.config import ServeConfig
from aggtrio.simulator import SIMULATORS, run_simulators
from aggtrio.watch import run_watch


async def run_demo(
    symbols: tuple[str, ...], *, port: int, json_lines: bool = False, count: int | None = None
) -> int:
    async with trio.open_nursery() as nursery:
        simulators = await nursery.start(
            functools.partial(run_simulators, dict.fromkeys(SIMULATORS, 0))
        )
        config = ServeConfig(
            port=port,
            symbols=symbols,
            venues=tuple(simulators),
            venue_urls={name: sim.url for name, sim in simulators.items()},
            log_level="WARNING",
        )
        service = await nursery.start(run_service, config)
        code = await run_watch(
            f"127.0.0.1:{service.port}", symbols[0], json_lines=json_lines, count=count
        )
        nursery.cancel_scope.cancel()
    return code
