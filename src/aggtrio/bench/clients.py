"""The load-generating client processes, driven together from the controller."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import attrs
import trio

from aggtrio.bench.hdr import merge
from aggtrio.bench.processes import BenchError, Child, Processes, gather, machine_busy_seconds

SYMBOL = "ETHBTC"
# Seconds for every stream of a phase to get its first message (1000 connections included).
OPEN_TIMEOUT = 40.0
REPLY_TIMEOUT = 15.0


@attrs.frozen
class Measurement:
    """What the clients received over one measured window, and what it cost."""

    messages: int
    bytes: int
    messages_per_second: float  # the sum of each process's rate over its own window
    histogram: Any  # HdrHistogram of latencies (µs); empty when counting
    client_cpu_shares: list[float]  # each process's CPU time over the window / its length
    server_cpu_share: float  # the server's (all its processes') CPU time / window length
    other_cpu_shares: dict[str, float]  # the same for other processes (the venues), by name
    # Cores busy machine-wide over the window, minus the CPU shares above: load the
    # benchmark did not make (another program), or the kernel's own networking work.
    unaccounted_cpu: float

    @property
    def mean_message_bytes(self) -> float:
        return self.bytes / self.messages if self.messages else 0.0


class ClientPool:
    """A few client processes reused across phases, so a phase pays no interpreter start."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    @classmethod
    async def start(cls, procs: Processes, count: int, name: str) -> ClientPool:
        """`count` client processes (rawclient.py)."""
        children = [
            await procs.start(f"{name}-client{index}", ["-m", "aggtrio.bench.rawclient"])
            for index in range(count)
        ]
        return cls(children)

    @asynccontextmanager
    async def streams(self, port: int, streams: int, mode: str) -> AsyncIterator[Streams]:
        """`streams` streams spread evenly over the processes, each with its first message
        received, for the duration of the block."""
        shares = [streams // len(self.children)] * len(self.children)
        for index in range(streams % len(self.children)):
            shares[index] += 1
        active = {child: share for child, share in zip(self.children, shares, strict=True) if share}
        opening = {"cmd": "open", "port": port, "mode": mode, "symbol": SYMBOL}
        try:
            await gather(
                partial(child.request, dict(opening, streams=share), OPEN_TIMEOUT)
                for child, share in active.items()
            )
            yield Streams(list(active))
        finally:
            # suppress: a dead client's error is already on its way.
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(REPLY_TIMEOUT),
                suppress(BenchError),
            ):
                await _each(active, {"cmd": "close"})

    async def measure(
        self,
        port: int,
        streams: int,
        *,
        mode: str,
        warmup: float,
        duration: float,
        server: Child,
        others: Sequence[Child] = (),
        go: Callable[[], Awaitable[object]] | None = None,
    ) -> Measurement:
        """Open `streams` streams, call `go` (to start the flow once all are open), wait
        `warmup` s, measure `duration` s, close them."""
        async with self.streams(port, streams, mode) as running:
            if go is not None:
                await go()
            await trio.sleep(warmup)
            return await running.measure(duration, server, others)


class Streams:
    """Streams open in some client processes."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    async def measure(
        self, duration: float, server: Child, others: Sequence[Child] = ()
    ) -> Measurement:
        """What arrives over the next `duration` s, and the CPU it costs everyone."""
        watched = [server, *others]
        cpu_before, started = [c.cpu_seconds() for c in watched], time.perf_counter()
        machine_before = machine_busy_seconds()
        await _each(self.children, {"cmd": "mark"})
        await trio.sleep(duration)
        results = await _each(self.children, {"cmd": "collect"})
        elapsed = time.perf_counter() - started
        machine_busy = (machine_busy_seconds() - machine_before) / elapsed
        shares = [
            (child.cpu_seconds() - before) / elapsed
            for child, before in zip(watched, cpu_before, strict=True)
        ]
        client_shares = [r["cpu_seconds"] / r["seconds"] for r in results]
        errors = [error for result in results for error in result["errors"]]
        if errors:
            raise BenchError(f"client streams failed: {errors[0]} ({len(errors)} errors)")
        return Measurement(
            messages=sum(r["messages"] for r in results),
            bytes=sum(r["bytes"] for r in results),
            messages_per_second=sum(r["messages"] / r["seconds"] for r in results),
            histogram=merge(r["histogram"] for r in results),
            client_cpu_shares=client_shares,
            server_cpu_share=shares[0],
            other_cpu_shares={
                child.name: share for child, share in zip(others, shares[1:], strict=True)
            },
            unaccounted_cpu=max(0.0, machine_busy - sum(shares) - sum(client_shares)),
        )


async def _each(children: Iterable[Child], command: dict[str, Any]) -> list[dict[str, Any]]:
    return await gather(partial(child.request, command, REPLY_TIMEOUT) for child in children)
