"""Fan-out: the most subscriber-messages per second one server delivers.

The venues change the book far faster than any subscriber can be sent it, so every
subscriber always has a newer summary waiting and the server sends flat out (conflating
the rest). The floor is a purerpc server whose handlers stream one pre-serialized Summary
as fast as purerpc takes it (floor.py). Both serve the same counting client processes
(rawclient.py), one connection per subscriber. The venue process runs throughout, so it
loads the machine alike in both measurements.

The flow starts only once every stream is open: a server sending flat out accepts new
connections slowly (one per scheduling round), so opening 1000 streams against a busy
server would take longer than the measurement.

It is the server's number only if the server is what saturates: its CPU time over the
window must be about a core per server process. The clients' CPU shares are reported
beside it.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from aggtrio.bench.clients import REPLY_TIMEOUT, SYMBOL, ClientPool, Measurement
from aggtrio.bench.latency import NO_RESENDS, venue_url_args
from aggtrio.bench.processes import Child, Processes, child_env, processes
from aggtrio.bench.venues import VenueRates

SUBSCRIBERS = (100, 1000)
CLIENT_PROCESSES = 4
RATIO_MIN = 0.8
# A server process is saturated at this share of a core or more.
SATURATED = 0.9
# ~1,000 book changes a second on one symbol: each of 100 subscribers can be sent a few
# hundred summaries a second at most, so there is always a newer one.
DRIVE = VenueRates("fan-out drive", 0.01, 100.0, 1000.0)


@attrs.frozen
class FanoutPlan:
    subscribers: tuple[int, ...] = SUBSCRIBERS
    warmup: float = 2.0
    duration: float = 5.0
    workers: tuple[int, ...] = (1, 2)


async def serve_has_workers_flag() -> bool:
    result = await trio.run_process(
        [sys.executable, "-m", "aggtrio", "serve", "--help"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=child_env(),
    )
    return b"--workers" in result.stdout


async def run_fanout(log_dir: Path, plan: FanoutPlan) -> dict[str, Any]:
    workers_flag = await serve_has_workers_flag()
    async with processes(log_dir) as procs:
        pool = await ClientPool.start(procs, CLIENT_PROCESSES, "fanout")
        venues, ready = await procs.start_bench_child("venues-fanout", "venues", DRIVE.args())
        rig = _Rig(procs, pool, venues, venue_url_args(ready["urls"]), plan)
        rows = []
        for subscribers in plan.subscribers:
            ours = await rig.ours(subscribers, workers=1)
            floor = await rig.floor(subscribers)
            # Judged by server CPU per message: with both servers saturated, the throughput
            # ratio is this, and unlike throughput it barely moves when something else on
            # the machine takes CPU from one of the two measurements.
            cpu_ratio = floor["server_us_per_message"] / ours["server_us_per_message"]
            rows.append(
                {
                    "subscribers": subscribers,
                    "aggtrio": ours,
                    "floor": floor,
                    "ratio": round(ours["messages_per_second"] / floor["messages_per_second"], 3),
                    "cpu_ratio": round(cpu_ratio, 3),
                    "pass": cpu_ratio >= RATIO_MIN,
                }
            )
        scaling: list[dict[str, Any]] = []
        note = None
        if len(plan.workers) < 2:
            note = "not measured in a quick run"
        elif not workers_flag:
            note = "aggtrio serve has no --workers flag yet: scaling not measured"
        else:
            for row in rows:
                subscribers = row["subscribers"]
                by_workers = {1: row["aggtrio"]} | {
                    w: await rig.ours(subscribers, workers=w) for w in plan.workers if w != 1
                }
                scaling.append(
                    {
                        "subscribers": subscribers,
                        "by_workers": {str(w): m for w, m in by_workers.items()},
                        "speedup": {
                            str(w): round(
                                m["messages_per_second"] / row["aggtrio"]["messages_per_second"], 3
                            )
                            for w, m in by_workers.items()
                        },
                    }
                )
    return {
        "client_processes": CLIENT_PROCESSES,
        "connections": "one per subscriber",
        "measured_seconds": plan.duration,
        "warmup_seconds": plan.warmup,
        "venue_rates": attrs.asdict(DRIVE),
        "venue_messages_per_second": DRIVE.messages_per_second(),
        "targets": {"ratio_min": RATIO_MIN, "judged_by": "server CPU per message"},
        "rows": rows,
        "workers_scaling": scaling,
        "workers_note": note,
    }


@attrs.frozen
class _Rig:
    """What every fan-out measurement shares: the clients and the venues."""

    procs: Processes
    pool: ClientPool
    venues: Child
    url_args: list[str]
    plan: FanoutPlan

    async def ours(self, subscribers: int, *, workers: int) -> dict[str, Any]:
        args = ["--symbols", SYMBOL, *self.url_args, "--resend-interval", NO_RESENDS]
        args += ["--max-subscribers", str(subscribers)]
        if workers != 1:
            args += ["--workers", str(workers)]
        # Frozen, the venues publish nothing new: the streams open on an idle server.
        await self.venues.request({"cmd": "freeze"}, REPLY_TIMEOUT)
        name = f"aggtrio-fanout-{subscribers}-w{workers}"
        server, port = await self.procs.start_server(name, args)
        go = partial(self.venues.request, {"cmd": "unfreeze"}, REPLY_TIMEOUT)
        return await self._measure(server, port, subscribers, go, workers)

    async def floor(self, subscribers: int) -> dict[str, Any]:
        name = f"floor-stream-{subscribers}"
        floor, ready = await self.procs.start_bench_child(name, "floor", ["stream"])
        go = partial(floor.request, {"cmd": "go"}, REPLY_TIMEOUT)
        return await self._measure(floor, ready["port"], subscribers, go, 1)

    async def _measure(
        self,
        server: Child,
        port: int,
        subscribers: int,
        go: Callable[[], Awaitable[object]],
        workers: int,
    ) -> dict[str, Any]:
        try:
            measured = await self.pool.measure(
                port,
                subscribers,
                mode="count",
                warmup=self.plan.warmup,
                duration=self.plan.duration,
                server=server,
                others=[self.venues],
                go=go,
            )
        finally:
            await self.procs.stop(server)
        return _result(measured, workers)


def _result(measured: Measurement, workers: int) -> dict[str, Any]:
    saturated = measured.server_cpu_share >= SATURATED * workers
    return {
        "messages_per_second": round(measured.messages_per_second),
        "mean_message_bytes": round(measured.mean_message_bytes),
        "server_processes": workers,
        "server_cpu_share": round(measured.server_cpu_share, 3),
        "server_us_per_message": round(
            measured.server_cpu_share / measured.messages_per_second * 1e6, 1
        ),
        "client_cpu_shares": [round(share, 3) for share in measured.client_cpu_shares],
        "venue_cpu_share": round(sum(measured.other_cpu_shares.values()), 3),
        "unaccounted_cpu": round(measured.unaccounted_cpu, 3),
        "server_saturated": saturated,
    }
