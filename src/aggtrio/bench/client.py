"""A load-generating client process: many grpcio streams, timing or counting what arrives.

grpcio (C core, asyncio API) rather than purerpc: clients must be cheaper than the server
they load, and a grpcio client is what users run. Every stream has a connection of its own,
as independent subscribers would. Run as ``python -m aggtrio.bench.client``; commands
arrive as JSON lines on standard input, one reply line each:

* ``{"cmd": "open", "port": P, "streams": N, "mode": "latency" | "count"}`` starts N
  ``BookSummaryForSymbol`` streams and replies ``open`` once each has had a message;
* ``{"cmd": "mark"}`` starts the measured window (clears the histogram, notes counters,
  time and CPU time);
* ``{"cmd": "collect"}`` replies with what arrived since the mark: messages, bytes,
  seconds, CPU seconds (all threads, grpc's included), errors, and in latency mode the
  histogram of ``time.time_ns() - arrival_time`` on receipt, in µs, encoded;
* ``{"cmd": "close"}`` cancels every stream and closes its connection.

It exits when its standard input closes.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

import grpc
import grpc.aio

from aggtrio._proto.orderbook_pb2 import Summary, SummaryRequest
from aggtrio.bench.hdr import encode, new_histogram, record

METHOD = "/orderbook.OrderbookAggregator/BookSummaryForSymbol"
# Each channel its own TCP connection: grpcio would otherwise share one per target.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
OPEN_TIMEOUT = 30.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Load:
    """Every stream of this process and what they received."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.histogram: Any = new_histogram()
        self.recording = False
        self.errors: list[str] = []
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._mark = (0, 0, 0.0, 0.0)

    async def open(self, port: int, streams: int, mode: str, symbol: str) -> None:
        request = SummaryRequest(symbol=symbol).SerializeToString()
        consume = self._time if mode == "latency" else self._count
        firsts: list[asyncio.Future[None]] = []
        for _ in range(streams):
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
            self.channels.append(channel)
            # No (de)serializers: requests go as bytes, responses arrive as bytes.
            call = channel.unary_stream(METHOD)(request)
            first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            firsts.append(first)
            self.tasks.append(asyncio.create_task(self._guard(consume(call, first), first)))
        await asyncio.wait_for(asyncio.gather(*firsts), OPEN_TIMEOUT)

    async def _guard(self, consuming: Any, first: asyncio.Future[None]) -> None:
        try:
            await consuming
            raise RuntimeError("the server ended the stream")
        except asyncio.CancelledError:
            pass  # close
        except (grpc.aio.AioRpcError, RuntimeError) as exc:
            message = (
                f"{exc.code().name}: {exc.details()}"
                if isinstance(exc, grpc.RpcError)
                else str(exc)
            )
            self.errors.append(message)
            if not first.done():
                first.set_exception(RuntimeError(message))

    async def _time(self, call: Any, first: asyncio.Future[None]) -> None:
        last_arrival = 0
        async for data in call:
            now = time.time_ns()
            arrival = Summary.FromString(data).arrival_time
            if arrival == last_arrival:
                continue  # a resend of the summary already timed
            last_arrival = arrival
            self.messages += 1
            self.bytes += len(data)
            if self.recording:
                record(self.histogram, (now - arrival) // 1000)
            if not first.done():
                first.set_result(None)

    async def _count(self, call: Any, first: asyncio.Future[None]) -> None:
        async for data in call:
            self.messages += 1
            self.bytes += len(data)
            if not first.done():
                first.set_result(None)

    def mark(self) -> None:
        self.histogram = new_histogram()
        self.recording = True
        self._mark = (self.messages, self.bytes, time.perf_counter(), _cpu_seconds())

    def collect(self) -> dict[str, Any]:
        messages, nbytes, started, cpu = self._mark
        return {
            "messages": self.messages - messages,
            "bytes": self.bytes - nbytes,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": _cpu_seconds() - cpu,
            "errors": self.errors[:10],
            "histogram": encode(self.histogram),
        }

    async def close(self) -> None:
        self.recording = False
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(channel.close() for channel in self.channels))
        self.tasks.clear()
        self.channels.clear()
        self.errors.clear()


def reply(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def serve_commands() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    load = Load()
    while line := await reader.readline():
        command = json.loads(line)
        cmd = command.get("cmd")
        try:
            if cmd == "open":
                await load.open(
                    command["port"], command["streams"], command["mode"], command["symbol"]
                )
                reply("open", streams=len(load.tasks))
            elif cmd == "mark":
                load.mark()
                reply("marked")
            elif cmd == "collect":
                reply("collected", **load.collect())
            elif cmd == "close":
                await load.close()
                reply("closed")
            else:
                reply("error", message=f"unknown command {command}")
        except (TimeoutError, RuntimeError) as exc:
            reason = str(exc) or f"no message on every stream within {OPEN_TIMEOUT:g} s"
            reply("error", message=f"{cmd}: {reason}")
    await load.close()


def main() -> None:
    asyncio.run(serve_commands())


if __name__ == "__main__":
    main()
