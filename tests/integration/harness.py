"""Helpers for integration tests: `aggtrio serve` as a subprocess, real gRPC clients."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import purerpc
import trio

from aggtrio._proto.orderbook_grpc import OrderbookAggregatorStub
from aggtrio._proto.orderbook_pb2 import Empty, Summary, SummaryRequest
from aggtrio.simulator import SimulatedVenue

ROOT = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving .* on (\S+):(\d+) \(depth")
Level = tuple[str, float, float]


@attrs.define
class ServerProcess:
    """`python -m aggtrio serve` running in a child process."""

    process: trio.Process
    port: int
    log: list[str]

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def problems(self) -> list[str]:
        """Log lines no healthy run should print: tracebacks, errors, purerpc's warnings."""
        return [
            line
            for line in self.log
            if "Traceback" in line or " ERROR " in line or "purerpc" in line
        ]


async def start_server(
    nursery: trio.Nursery, args: Sequence[str], *, ready_timeout: float = 20.0
) -> ServerProcess:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "aggtrio", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    log: list[str] = []
    ready = trio.Event()
    port: list[int] = []

    async def read_log() -> None:
        assert process.stderr is not None
        buffer = b""
        async for chunk in process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                log.append(line)
                match = SERVING.search(line)
                if match and not ready.is_set():
                    port.append(int(match.group(2)))
                    ready.set()

    nursery.start_soon(read_log)
    with trio.fail_after(ready_timeout):
        while not ready.is_set():
            if process.poll() is not None:
                await trio.sleep(0.1)  # let the log reader catch the last lines
                raise AssertionError("server exited early:\n" + "\n".join(log))
            with trio.move_on_after(0.05):
                await ready.wait()
    return ServerProcess(process, port[0], log)


# --- clients ---------------------------------------------------------------------------


def levels(side: Any) -> list[Level]:
    return [(lvl.exchange, lvl.price, lvl.amount) for lvl in side]


@asynccontextmanager
async def purerpc_channel(port: int) -> AsyncIterator[Any]:
    """purerpc's channel, plus closing the TCP socket it leaves open on exit."""
    channel = purerpc.insecure_channel("127.0.0.1", port)
    try:
        async with channel:
            yield channel
    finally:
        if channel._grpc_socket is not None:
            await channel._grpc_socket._socket._stream.aclose()


async def purerpc_stream(
    port: int,
    symbol: str | None,
    on_summary: Callable[[Summary], Awaitable[bool]],
) -> None:
    """Stream summaries to `on_summary` until it returns True."""
    async with purerpc_channel(port) as channel:
        stub = OrderbookAggregatorStub(channel)
        call = (
            stub.BookSummary(Empty())
            if symbol is None
            else stub.BookSummaryForSymbol(SummaryRequest(symbol=symbol))
        )
        async with aclosing(call) as summaries:
            async for summary in summaries:
                if await on_summary(summary):
                    return


async def first_summary(
    port: int,
    symbol: str | None,
    predicate: Callable[[Summary], bool],
    within: float = 10.0,
) -> Summary:
    """The first summary on a new stream that satisfies `predicate`."""
    found: list[Summary] = []

    async def check(summary: Summary) -> bool:
        if predicate(summary):
            found.append(summary)
            return True
        return False

    with trio.fail_after(within):
        await purerpc_stream(port, symbol, check)
    return found[0]


def naive_merge(books: dict[str, Any], depth: int = 10) -> tuple[list[Level], list[Level]]:
    """The README's ordering rules spelled out independently of aggtrio.merge."""
    bids = [(venue, p, a) for venue, book in books.items() for p, a in book.bids]
    asks = [(venue, p, a) for venue, book in books.items() for p, a in book.asks]
    bids.sort(key=lambda lvl: (-lvl[1], -lvl[2], lvl[0]))
    asks.sort(key=lambda lvl: (lvl[1], -lvl[2], lvl[0]))
    return bids[:depth], asks[:depth]


def venue_url_args(sims: dict[str, SimulatedVenue]) -> list[str]:
    """`--venue-url NAME=URL` arguments pointing `serve` at the simulators."""
    return [arg for name, sim in sims.items() for arg in ("--venue-url", f"{name}={sim.url}")]
