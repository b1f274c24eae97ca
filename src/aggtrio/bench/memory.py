"""Memory: the server's resident set idle, with 1000 subscribers, and under a stalled one.

One ``aggtrio serve`` at realistic venue rates, read from /proc (VmRSS):

* idle: connected to the venues, no subscriber;
* with 1000 subscribers streaming (counting clients, a connection each);
* then, those gone, one stalled subscriber (a raw HTTP/2 stream that is never read, so
  the server's flow-control window for it fills) beside a few readers, sampled every few
  seconds: after a warm-up the resident set must stay flat (a least-squares line through
  the samples rises less than FLAT_KIB over the run).
"""

from __future__ import annotations

import statistics
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from aggtrio.bench.clients import REPLY_TIMEOUT, SYMBOL, ClientPool
from aggtrio.bench.h2wire import DEFAULT_WINDOW
from aggtrio.bench.latency import venue_url_args
from aggtrio.bench.processes import Child, processes
from aggtrio.bench.stalled import open_stalled_stream, unread_bytes
from aggtrio.bench.venues import REALISTIC

CLIENT_PROCESSES = 4
READERS_BESIDE_STALLED = 10
MAX_RSS_MIB = 150
FLAT_KIB = 2048


@attrs.frozen
class MemoryPlan:
    subscribers: int = 1000
    settle: float = 3.0  # idle seconds before the idle reading
    streaming: float = 5.0  # seconds the 1000 subscribers stream before the reading
    stall_warmup: float = 10.0
    stall_duration: float = 60.0
    sample_every: float = 2.0


async def run_memory(log_dir: Path, plan: MemoryPlan) -> dict[str, Any]:
    async with processes(log_dir) as procs:
        pool = await ClientPool.start(procs, CLIENT_PROCESSES, "memory")
        venues, ready = await procs.start_bench_child("venues-memory", "venues", REALISTIC.args())
        server, port = await procs.start_server(
            "aggtrio-memory",
            [
                *("--symbols", SYMBOL, *venue_url_args(ready["urls"])),
                *("--max-subscribers", str(plan.subscribers)),
            ],
        )
        await trio.sleep(plan.settle)
        idle = await _steady_rss(server)

        # Frozen venues while the connections open: a busy server accepts them slowly.
        await venues.request({"cmd": "freeze"}, REPLY_TIMEOUT)
        async with pool.streams(port, plan.subscribers, "count") as streams:
            await venues.request({"cmd": "unfreeze"}, REPLY_TIMEOUT)
            measured = await streams.measure(plan.streaming, server)
            full = await _steady_rss(server)

        stalled = await _stalled_run(pool, server, port, plan)
    return {
        "venue_rates": attrs.asdict(REALISTIC),
        "idle_mib": _mib(idle),
        "subscribers": plan.subscribers,
        "with_subscribers_mib": _mib(full),
        "with_subscribers_messages_per_second": round(measured.messages_per_second),
        "targets": {"max_rss_mib": MAX_RSS_MIB, "flat_kib": FLAT_KIB},
        "pass_rss": full / 1024 <= MAX_RSS_MIB,
        "stalled": stalled,
    }


async def _stalled_run(
    pool: ClientPool, server: Child, port: int, plan: MemoryPlan
) -> dict[str, Any]:
    sock = await trio.to_thread.run_sync(partial(open_stalled_stream, port, SYMBOL))
    try:
        async with pool.streams(port, READERS_BESIDE_STALLED, "count") as readers:
            await trio.sleep(plan.stall_warmup)
            samples: list[tuple[float, int]] = []
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sample, server, started, plan, samples)
                measured = await readers.measure(plan.stall_duration, server)
        unread = unread_bytes(sock)
    finally:
        sock.close()
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    slope = statistics.linear_regression(times, values).slope if len(samples) > 1 else 0.0
    rise = slope * (times[-1] - times[0]) if len(samples) > 1 else 0.0
    return {
        "seconds": plan.stall_duration,
        "warmup_seconds": plan.stall_warmup,
        "samples_mib": [[round(t, 1), _mib(v)] for t, v in samples],
        "start_mib": _mib(values[0]),
        "end_mib": _mib(values[-1]),
        "max_mib": _mib(max(values)),
        "slope_kib_per_minute": round(slope * 60, 1),
        "fitted_rise_kib": round(rise),
        "pass_flat": rise < FLAT_KIB,
        # The server stopped at the stream's flow-control window: no backlog behind it.
        "unread_bytes_at_stalled_client": unread,
        "stalled_stream_window": DEFAULT_WINDOW,
        "readers": READERS_BESIDE_STALLED,
        "readers_messages_per_second": round(measured.messages_per_second),
    }


async def _sample(
    server: Child, started: float, plan: MemoryPlan, samples: list[tuple[float, int]]
) -> None:
    deadline = started + plan.stall_duration
    while True:
        samples.append((trio.current_time() - started, server.rss_kib()))
        if trio.current_time() + plan.sample_every > deadline + 1e-3:
            return
        await trio.sleep_until(started + len(samples) * plan.sample_every)


async def _steady_rss(server: Child, readings: int = 5, interval: float = 0.2) -> int:
    """The median of a few readings, in KiB (one reading can catch a transient)."""
    values = []
    for _ in range(readings):
        values.append(server.rss_kib())
        await trio.sleep(interval)
    return int(statistics.median(values))


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)
