"""Latency: venue message received (``arrival_time``) to summary received by a subscriber.

For each venue rate, one venue process feeds both ``aggtrio serve`` and the floor relay
(floor.py) at once; then, for each subscriber count, the same client processes measure
aggtrio and the floor in turn, ABBA (aggtrio, floor, floor, aggtrio) so that a drift in the
machine's load weighs on both alike. Each phase opens its streams, waits a warm-up (not
measured: connection set-up, the first summary, which may be old), then records every new
summary's latency into an HDR histogram in each client process; the histograms are merged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import trio

from aggtrio.bench.clients import SYMBOL, ClientPool, Measurement
from aggtrio.bench.hdr import combine, summarize
from aggtrio.bench.processes import Child, Processes, processes
from aggtrio.bench.venues import REALISTIC, TEN_TIMES, VenueRates

SUBSCRIBERS = (1, 10, 100)
CLIENT_PROCESSES = 4
# Targets at realistic rates, as ratios to the floor measured in the same run.
P50_RATIO_MAX = 1.3
P99_RATIO_MAX = 2.0
# Resends repeat an arrival_time (clients skip them); this keeps them out altogether.
NO_RESENDS = "3600"


@attrs.frozen
class LatencyPlan:
    rates: tuple[VenueRates, ...] = (REALISTIC, TEN_TIMES)
    subscribers: tuple[int, ...] = SUBSCRIBERS
    warmup: float = 1.0
    # Measured seconds per server and row at realistic rates, and at the faster ones (where
    # samples come ten times as fast).
    duration: float = 12.0
    fast_duration: float = 6.0
    order: tuple[str, ...] = ("aggtrio", "floor", "floor", "aggtrio")


def venue_url_args(urls: dict[str, str]) -> list[str]:
    return [arg for name, url in urls.items() for arg in ("--venue-url", f"{name}={url}")]


async def run_latency(log_dir: Path, plan: LatencyPlan) -> dict[str, Any]:
    async with processes(log_dir) as procs:
        pool = await ClientPool.start(procs, CLIENT_PROCESSES, "latency")
        rows = []
        for rates in plan.rates:
            rows += await _measure_rate(procs, pool, rates, plan)
    return {
        "client_processes": CLIENT_PROCESSES,
        "measured_seconds_per_target": {"realistic": plan.duration, "faster": plan.fast_duration},
        "warmup_seconds": plan.warmup,
        "targets": {"p50_ratio_max": P50_RATIO_MAX, "p99_ratio_max": P99_RATIO_MAX},
        "rows": rows,
    }


async def _measure_rate(
    procs: Processes, pool: ClientPool, rates: VenueRates, plan: LatencyPlan
) -> list[dict[str, Any]]:
    venues, ready = await procs.start_bench_child(f"venues-{rates.name}", "venues", rates.args())
    url_args = venue_url_args(ready["urls"])
    ours, port = await procs.start_server(
        f"aggtrio-{rates.name}",
        ["--symbols", SYMBOL, *url_args, "--resend-interval", NO_RESENDS],
    )
    floor, floor_ready = await procs.start_bench_child(
        f"floor-relay-{rates.name}", "floor", ["relay", *url_args]
    )
    targets: dict[str, tuple[Child, int]] = {
        "aggtrio": (ours, port),
        "floor": (floor, floor_ready["port"]),
    }
    sent_before = await venues.request({"cmd": "stats"}, 5.0)
    started = trio.current_time()
    # The measured time of each target is split over its turns in the ABBA order.
    duration = plan.duration if rates == REALISTIC else plan.fast_duration
    turn = duration / plan.order.count("aggtrio")
    rows = []
    for subscribers in plan.subscribers:
        measured: dict[str, list[Measurement]] = {name: [] for name in targets}
        for name in plan.order:
            child, target_port = targets[name]
            measured[name].append(
                await pool.measure(
                    target_port,
                    subscribers,
                    mode="latency",
                    warmup=plan.warmup,
                    duration=turn,
                    server=child,
                )
            )
        rows.append(_row(rates, subscribers, measured))
    sent_after = await venues.request({"cmd": "stats"}, 5.0)
    elapsed = trio.current_time() - started
    # Both targets are connected to each venue, so each venue sends every message twice.
    per_connection = sum(sent_after["sent"].values()) - sum(sent_before["sent"].values())
    for row in rows:
        row["venue_messages_per_second"] = round(per_connection / 2 / elapsed, 1)
    for child in (ours, floor, venues):
        await procs.stop(child)
    return rows


def _row(
    rates: VenueRates, subscribers: int, measured: dict[str, list[Measurement]]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "rate": rates.name,
        "venue_rates": attrs.asdict(rates),
        "subscribers": subscribers,
    }
    for name, turns in measured.items():
        stats: dict[str, Any] = summarize(combine(m.histogram for m in turns))
        stats["messages_per_second"] = round(
            sum(m.messages_per_second for m in turns) / len(turns), 1
        )
        stats["server_cpu_share"] = round(max(m.server_cpu_share for m in turns), 3)
        stats["client_cpu_share_max"] = round(
            max(share for m in turns for share in m.client_cpu_shares), 3
        )
        stats["unaccounted_cpu_max"] = round(max(m.unaccounted_cpu for m in turns), 3)
        row[name] = stats
    ours, floor = row["aggtrio"], row["floor"]
    row["p50_ratio"] = _ratio(ours["p50"], floor["p50"])
    row["p99_ratio"] = _ratio(ours["p99"], floor["p99"])
    if rates == REALISTIC:
        row["pass"] = (
            row["p50_ratio"] is not None
            and row["p99_ratio"] is not None
            and row["p50_ratio"] <= P50_RATIO_MAX
            and row["p99_ratio"] <= P99_RATIO_MAX
        )
    return row


def _ratio(value: int, floor: int) -> float | None:
    return round(value / floor, 2) if floor else None
