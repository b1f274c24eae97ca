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
    port: int = 0
    log: list[str] = attrs.field(factory=list)
    _log_grew: trio.Event = attrs.field(factory=trio.Event)
    _log_ended: bool = False

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def problems(self) -> list[str]:
        """Log lines no healthy run should print: tracebacks, errors, purerpc's warnings."""
        return [
            line
            for line in self.log
            if "Traceback" in line or " ERROR " in line or "purerpc" in line
        ]

    def rss_kib(self) -> int:
        """The process's resident memory (VmRSS), in KiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
        assert match is not None, status
        return int(match.group(1))

    async def wait_for_line(
        self, pattern: str | re.Pattern[str], start: int = 0
    ) -> tuple[int, re.Match[str]]:
        """The first log line from index `start` on that matches `pattern`, when it comes:
        its index and the match."""
        index = start
        while True:
            while index < len(self.log):
                match = re.search(pattern, self.log[index])
                if match is not None:
                    return index, match
                index += 1
            if self._log_ended:
                raise AssertionError(f"server exited before logging {pattern!r}")
            await self._log_grew.wait()

    async def wait_for_log_end(self) -> None:
        """Until every process writing the log has closed it: with `serve --workers`, the
        supervisor and every worker (they share its stderr)."""
        while not self._log_ended:
            await self._log_grew.wait()

    def _append(self, lines: list[str], *, ended: bool = False) -> None:
        self.log.extend(lines)
        self._log_ended = ended
        grew, self._log_grew = self._log_grew, trio.Event()
        grew.set()

    async def stop_and_check(self) -> None:
        """SIGTERM, then: it exits 0 within 5 s and logged no problems."""
        if self.process.returncode is None:
            self.terminate()
            with trio.fail_after(5):
                await self.process.wait()
        assert self.process.returncode == 0, "\n".join(self.log)
        assert self.problems() == []


async def start_server(
    nursery: trio.Nursery, args: Sequence[str], *, ready_timeout: float = 20.0
) -> ServerProcess:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "aggtrio", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    server = ServerProcess(process)

    async def read_log() -> None:
        assert process.stderr is not None
        buffer = b""
        async for chunk in process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            server._append([raw.decode(errors="replace") for raw in lines])
        server._append([], ended=True)

    nursery.start_soon(read_log)
    with trio.fail_after(ready_timeout):
        try:
            _, match = await server.wait_for_line(SERVING)
        except AssertionError:
            raise AssertionError("server exited early:\n" + "\n".join(server.log)) from None
    server.port = int(match.group(2))
    return server


@asynccontextmanager
async def running_server(
    nursery: trio.Nursery, args: Sequence[str]
) -> AsyncIterator[ServerProcess]:
    """`start_server`, then `stop_and_check` after the block; killed if the block fails
    (else the server would outlive the test, holding its pipes)."""
    server = await start_server(nursery, args)
    try:
        yield server
        await server.stop_and_check()
    finally:
        if server.process.returncode is None:
            server.process.kill()
            with trio.CancelScope(shield=True):
                await server.process.wait()


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
