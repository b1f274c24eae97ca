"""A client process for test_many_clients: many grpcio (asyncio) streams on a few connections.

Run as ``python -m tests.integration.client_worker SPEC_JSON`` (see :class:`Spec`). It
talks to the test over its standard streams, one line each way:

* it prints ``open`` once every stream is running (readers and cancellers have their first
  summary, never-readers their response headers);
* on ``act`` the cancellers cancel, each at a random moment within ``cancel_within`` s;
* on ``stop`` it cancels every call still running and prints one JSON line of results;
* on ``exit`` (or end of input) it closes its channels and exits.

Roles: a *reader* reads everything and records each summary's ``arrival_time``; a
*canceller* reads until it cancels its call (RST_STREAM) while its connection stays up; a
*never-reader* starts its call and never reads. Never-readers get a connection of their
own with small windows, so the server soon has full flow-control windows in front of them.
They cannot share a connection with readers: grpcio credits the connection-level window
only as the application reads, so a few unread streams stall the whole connection inside
the client, whatever the server does. A process killed mid-stream is the test's own doing
(SIGKILL: its sockets close with no goodbye).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

# The channel options of the connections never-readers live on: no BDP probing (which
# grows windows to megabytes) and a 4 KiB stream window, so a never-read stream stops the
# server after a handful of ~600-byte summaries instead of after minutes.
SMALL_WINDOWS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)]
# Each channel its own TCP connection: grpcio would otherwise share one per target.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# (RPC, requested symbol, canonical symbol): both RPCs and several spellings.
REQUESTS = [
    ("symbol", "ETHBTC", "ETHBTC"),
    ("symbol", "btc-usdt", "BTCUSDT"),
    ("default", None, "ETHBTC"),
    ("symbol", "BTC/USDT", "BTCUSDT"),
    ("symbol", "eth_btc", "ETHBTC"),
]
LAG_TICK = 0.02


@dataclass
class Spec:
    port: int
    pb2_dir: str
    readers: int
    cancellers: int
    live_connections: int  # default options; readers and cancellers spread over them
    stalled_never_readers: int = 0  # on a small-window connection of their own
    cancel_within: float = 2.0
    seed: int = 0


@dataclass
class Reader:
    symbol: str
    arrivals: list[int] = field(default_factory=list)
    error: str | None = None


class Worker:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        sys.path.insert(0, spec.pb2_dir)
        self.pb2: Any = importlib.import_module("orderbook_pb2")
        self.pb2_grpc: Any = importlib.import_module("orderbook_pb2_grpc")
        self.random = random.Random(spec.seed)
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list[Any] = []
        self.readers: list[Reader] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.cancelled_after: list[int] = []
        self.max_lag = 0.0

    def channel(self, small_windows: bool) -> grpc.aio.Channel:
        options = OWN_CONNECTION + (SMALL_WINDOWS if small_windows else [])
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.spec.port}", options=options)
        self.channels.append(channel)
        return channel

    def start_call(self, channel: grpc.aio.Channel, index: int) -> tuple[Any, str]:
        rpc, requested, canonical = REQUESTS[index % len(REQUESTS)]
        stub = self.pb2_grpc.OrderbookAggregatorStub(channel)
        if rpc == "default":
            call = stub.BookSummary(self.pb2.Empty())
        else:
            call = stub.BookSummaryForSymbol(self.pb2.SummaryRequest(symbol=requested))
        self.calls.append(call)
        return call, canonical

    async def read(self, call: Any, reader: Reader, first: asyncio.Future[None]) -> None:
        try:
            async for summary in call:
                reader.arrivals.append(summary.arrival_time)
                if not first.done():
                    first.set_result(None)
        except asyncio.CancelledError:
            pass  # stop cancelled the call
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                reader.error = f"{exc.code().name}: {exc.details()}"
        if not first.done():
            first.set_exception(RuntimeError(f"stream ended first: {reader.error}"))

    async def cancel_later(self, call: Any, reader: Reader, act: asyncio.Event) -> None:
        await act.wait()
        await asyncio.sleep(self.random.uniform(0, self.spec.cancel_within))
        self.cancelled_after.append(len(reader.arrivals))
        call.cancel()

    async def start(self, act: asyncio.Event) -> None:
        """Start every call; return once each is known to be running."""
        live = [self.channel(small_windows=False) for _ in range(self.spec.live_connections)]
        stalled = self.channel(small_windows=True) if self.spec.stalled_never_readers else None
        waits: list[Any] = []
        roles = ["reader"] * self.spec.readers + ["canceller"] * self.spec.cancellers
        for index, role in enumerate(roles):
            call, symbol = self.start_call(live[index % len(live)], index)
            reader = Reader(symbol)
            first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.tasks.append(asyncio.create_task(self.read(call, reader, first)))
            if role == "reader":
                self.readers.append(reader)
            else:
                self.tasks.append(asyncio.create_task(self.cancel_later(call, reader, act)))
            waits.append(first)
        for index in range(len(roles), len(roles) + self.spec.stalled_never_readers):
            call, _symbol = self.start_call(stalled, index)
            waits.append(call.initial_metadata())
        await asyncio.gather(*waits)

    async def watch_lag(self) -> None:
        """The worst lateness of this event loop: a busy client would be a bottleneck."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_TICK)
            self.max_lag = max(self.max_lag, time.monotonic() - before - LAG_TICK)

    async def stop(self) -> dict[str, Any]:
        for call in self.calls:
            call.cancel()
        await asyncio.gather(*self.tasks)
        return {
            "readers": [
                {"symbol": r.symbol, "arrivals": r.arrivals, "error": r.error} for r in self.readers
            ],
            "cancelled_after": self.cancelled_after,
        }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def next_command() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(spec: Spec) -> None:
    worker = Worker(spec)
    act = asyncio.Event()
    lag = asyncio.create_task(worker.watch_lag())
    await worker.start(act)
    say("open")
    command = await next_command()
    acted_at, cpu_at_act = time.monotonic(), cpu_seconds()
    worker.max_lag = 0.0
    act.set()
    while command not in ("stop", "exit", ""):
        command = await next_command()
    results = await worker.stop()
    # CPU used over wall time while acting: well below 1 means the client kept up.
    results["cpu_share"] = (cpu_seconds() - cpu_at_act) / (time.monotonic() - acted_at)
    results["max_loop_lag"] = worker.max_lag
    lag.cancel()
    say(json.dumps(results))
    while command not in ("exit", ""):
        command = await next_command()
    for channel in worker.channels:
        await channel.close()


if __name__ == "__main__":
    asyncio.run(main(Spec(**json.loads(sys.argv[1]))))
