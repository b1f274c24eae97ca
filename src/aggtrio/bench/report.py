"""What the benchmark prints and writes: the machine, one table per section, the JSON file."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PACKAGES = ("trio", "trio-websocket", "purerpc", "h2", "protobuf", "hdrhistogram")


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }


def machine_line(machine: dict[str, Any]) -> str:
    packages = ", ".join(f"{name} {v}" for name, v in machine["packages"].items() if v)
    load = " / ".join(str(v) for v in machine["load_average_before"])
    return (
        f"machine: {machine['cores']} cores ({machine['cpu_model']}), "
        f"{machine['implementation']} {machine['python']}, {machine['platform']}\n"
        f"packages: {packages}\nload average before (1/5/15 min): {load}"
    )


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return ""
    return "[green]PASS[/green]" if passed else "[red]MISS[/red]"


def _us(value: int) -> str:
    return f"{value:,}"


def _share(value: float) -> str:
    return f"{value * 100:.0f}%"


def _table(title: str, columns: Sequence[str]) -> Table:
    """A table whose columns are all right-aligned (they hold numbers)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    return table


def render_ingest(console: Console, result: dict[str, Any]) -> None:
    table = _table(
        "Ingest: CPU per venue message, in-process (µs)",
        ("venue", "µs / message", "floor µs / message", "ratio", "messages", "bytes / message"),
    )

    def row(label: str, stats: dict[str, Any], *, end_section: bool = False) -> None:
        floor = stats["floor_us_per_message"]
        table.add_row(
            label,
            f"{stats['us_per_message']:.1f}",
            f"{floor:.1f}",
            f"{stats['us_per_message'] / floor:.2f}" if floor else "",
            f"{stats['messages']:,}",
            f"{stats['bytes_per_message']:,}" if "bytes_per_message" in stats else "",
            end_section=end_section,
        )

    venues = list(result.get("venues", {}).items())
    for index, (venue, stats) in enumerate(venues):
        row(venue, stats, end_section=index == len(venues) - 1)
    for label, stats in result.get("combined", {}).items():
        row(f"{label} (together)", stats)
    row(f"all {len(venues)} venues" if venues else "all", result)
    console.print(table)
    seconds = result.get("recorded_seconds")
    recorded = f" ({seconds:g} s recorded)" if seconds else ""
    console.print(
        f"ingest: {result['messages_per_second']:,.0f} messages/s on one core, all venues' "
        f"messages as received{recorded}; each row replays only its venues' messages, so "
        "'all' also merges every venue's book into each summary"
    )


def render_book(console: Console, result: dict[str, Any]) -> None:
    per_size = result["us"]
    sizes = list(next(iter(per_size.values())))
    table = _table(
        f"Delta book: CPU per message ({result['changes_per_message']} changes + top-10 read), µs",
        ("side structure", *(f"{size} levels" for size in sizes)),
    )
    for name, row in per_size.items():
        table.add_row(name, *(f"{row[size]:.2f}" for size in sizes))
    console.print(table)


def render_latency(console: Console, result: dict[str, Any]) -> None:
    targets = result["targets"]
    columns = ["rate", "subs", "server", "samples", "p50", "p90", "p99", "p99.9", "max"]
    columns += ["msg/s", "server CPU", "p50 / floor", "p99 / floor", "target"]
    table = _table(
        "Latency: venue message received (arrival_time) → summary at the subscriber (µs)", columns
    )
    for row in result["rows"]:
        for name in ("aggtrio", "floor"):
            stats = row[name]
            ours = name == "aggtrio"
            table.add_row(
                f"{row['rate']} ({row['venue_messages_per_second']:g} msg/s)" if ours else "",
                str(row["subscribers"]) if ours else "",
                name,
                f"{stats['samples']:,}",
                *(_us(stats[key]) for key in ("p50", "p90", "p99", "p99_9", "max")),
                f"{stats['messages_per_second']:,.0f}",
                _share(stats["server_cpu_share"]),
                f"{row['p50_ratio']}" if ours else "",
                f"{row['p99_ratio']}" if ours else "",
                _verdict(row.get("pass")) if ours else "",
                end_section=not ours,
            )
    console.print(table)
    busiest = max(
        row[n]["client_cpu_share_max"] for row in result["rows"] for n in ("aggtrio", "floor")
    )
    other = max(
        row[n]["unaccounted_cpu_max"] for row in result["rows"] for n in ("aggtrio", "floor")
    )
    seconds = result["measured_seconds_per_target"]
    console.print(
        f"targets at realistic rates: p50 ≤ {targets['p50_ratio_max']}x and p99 ≤ "
        f"{targets['p99_ratio_max']}x the floor relay's. {result['client_processes']} client "
        f"processes, a connection per subscriber; the busiest used {_share(busiest)} of a "
        f"core. Warm-up {result['warmup_seconds']:g} s excluded; {seconds['realistic']:g} s "
        f"({seconds['faster']:g} s at 10x) measured per server and row, in ABBA turns. "
        f"Load from outside the benchmark: at most {_share(other)} of a core."
    )


def render_fanout(console: Console, result: dict[str, Any]) -> None:
    columns = ["subs", "server", "msg/s", "server CPU", "µs CPU / msg", "clients CPU (each)"]
    columns += ["venues CPU", "other CPU", "saturated", "msg/s / floor", "floor µs / ours"]
    columns += ["target"]
    table = _table("Fan-out: subscriber-messages per second from one server", columns)
    for row in result["rows"]:
        for name in ("aggtrio", "floor"):
            stats = row[name]
            ours = name == "aggtrio"
            table.add_row(
                str(row["subscribers"]) if ours else "",
                name,
                f"{stats['messages_per_second']:,}",
                _share(stats["server_cpu_share"]),
                f"{stats['server_us_per_message']:.0f}",
                " ".join(_share(s) for s in stats["client_cpu_shares"]),
                _share(stats["venue_cpu_share"]),
                _share(stats["unaccounted_cpu"]),
                "yes" if stats["server_saturated"] else "[red]no[/red]",
                f"{row['ratio']:.2f}" if ours else "",
                f"{row['cpu_ratio']:.2f}" if ours else "",
                _verdict(row["pass"]) if ours else "",
                end_section=not ours,
            )
    console.print(table)
    console.print(
        f"target: ≥ {result['targets']['ratio_min'] * 100:.0f} % of the floor, judged by server "
        "CPU per message (floor µs / ours): with both servers saturated that is the "
        "throughput ratio, and it barely moves when other load takes CPU from one "
        f"measurement. {result['client_processes']} client processes, {result['connections']}; "
        f"venues at ~{result['venue_messages_per_second']:,.0f} msg/s. 'saturated': the server "
        "used ≥ 90 % of a core per process, so it, not the clients, set the rate. 'other CPU': "
        "machine-wide busy time not used by the benchmark's processes."
    )
    if result["workers_note"]:
        console.print(f"workers: {result['workers_note']}")
    if result["workers_scaling"]:
        scaling = _table(
            "Fan-out with serve --workers N",
            ("subs", "workers", "msg/s", "server CPU", "clients CPU (each)", "speed-up"),
        )
        for row in result["workers_scaling"]:
            for workers, stats in row["by_workers"].items():
                scaling.add_row(
                    str(row["subscribers"]),
                    workers,
                    f"{stats['messages_per_second']:,}",
                    _share(stats["server_cpu_share"]),
                    " ".join(_share(s) for s in stats["client_cpu_shares"]),
                    f"{row['speedup'][workers]:.2f}",
                )
        console.print(scaling)


def render_memory(console: Console, result: dict[str, Any]) -> None:
    stalled = result["stalled"]
    table = _table("Memory: server resident set (VmRSS, MiB)", ("measure", "value", "target"))
    table.add_row("idle (venues connected, no subscriber)", f"{result['idle_mib']}", "")
    table.add_row(
        f"{result['subscribers']} subscribers streaming "
        f"({result['with_subscribers_messages_per_second']:,} msg/s)",
        f"{result['with_subscribers_mib']}",
        f"≤ {result['targets']['max_rss_mib']} " + _verdict(result["pass_rss"]),
    )
    table.add_row(
        f"one stalled subscriber, {stalled['seconds']:g} s: start / end / max",
        f"{stalled['start_mib']} / {stalled['end_mib']} / {stalled['max_mib']}",
        "",
    )
    table.add_row(
        "  slope (KiB/min); fitted rise over the run (KiB)",
        f"{stalled['slope_kib_per_minute']:g}; {stalled['fitted_rise_kib']:,}",
        f"rise < {result['targets']['flat_kib']:,} " + _verdict(stalled["pass_flat"]),
    )
    console.print(table)
    unread, window = stalled["unread_bytes_at_stalled_client"], stalled["stalled_stream_window"]
    held = "the server stopped there" if unread >= window else "not full yet"
    console.print(
        f"stalled subscriber: {unread:,} bytes unread at the client, its HTTP/2 window is "
        f"{window:,} ({held}); {stalled['readers']} readers beside it got "
        f"{stalled['readers_messages_per_second']:,} msg/s."
    )


RENDERERS: dict[str, Callable[[Console, dict[str, Any]], None]] = {
    "book": render_book,
    "ingest": render_ingest,
    "latency": render_latency,
    "fanout": render_fanout,
    "memory": render_memory,
}


def console() -> Console:
    # Wide enough for the latency table even when the output is a pipe or a file.
    return Console(width=max(Console().width, 160), file=sys.stdout)
