"""``aggtrio bench``: runs the chosen sections, prints their tables, writes the JSON file.

Each system section runs in a trio run of its own, with every process it starts killed
when it ends; a section that fails is reported in one line and the others still run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from aggtrio.bench.book import run_book_bench
from aggtrio.bench.fanout import FanoutPlan, run_fanout
from aggtrio.bench.ingest import run_ingest_bench
from aggtrio.bench.latency import LatencyPlan, run_latency
from aggtrio.bench.memory import MemoryPlan, run_memory
from aggtrio.bench.processes import BenchError, first_error
from aggtrio.bench.report import RENDERERS, console, machine_info, machine_line, write_json

SECTIONS = ("book", "ingest", "latency", "fanout", "memory")


@attrs.frozen
class BenchOptions:
    sections: tuple[str, ...] = SECTIONS
    quick: bool = False
    output: Path = Path("bench-results.json")
    # Measured seconds per latency turn and fan-out phase; None: the plan's own.
    duration: float | None = None


def plans(options: BenchOptions) -> tuple[LatencyPlan, FanoutPlan, MemoryPlan]:
    """What each section measures: the full run, or a smoke run of a few seconds."""
    if options.quick:
        latency = LatencyPlan(
            subscribers=(1, 10),
            warmup=0.2,
            duration=0.5,
            fast_duration=0.5,
            order=("aggtrio", "floor"),
        )
        fanout = FanoutPlan(subscribers=(10, 100), warmup=0.3, duration=0.7, workers=(1,))
        memory = MemoryPlan(
            subscribers=100,
            settle=0.5,
            streaming=0.5,
            stall_warmup=0.5,
            stall_duration=2.0,
            sample_every=0.5,
        )
    else:
        latency, fanout, memory = LatencyPlan(), FanoutPlan(), MemoryPlan()
    if options.duration is not None:
        latency = attrs.evolve(latency, duration=options.duration, fast_duration=options.duration)
        fanout = attrs.evolve(fanout, duration=options.duration)
    return latency, fanout, memory


def _run_trio(section: Callable[..., Awaitable[dict[str, Any]]], *args: Any) -> dict[str, Any]:
    try:
        return trio.run(section, *args)
    except BaseException as exc:
        error = first_error(exc)
        if isinstance(error, BenchError):
            raise error from None
        raise


def run_bench(options: BenchOptions) -> int:
    out = console()
    machine = machine_info()
    out.print(machine_line(machine))
    latency, fanout, memory = plans(options)
    log_dir = Path(tempfile.mkdtemp(prefix="aggtrio-bench-"))
    results: dict[str, Any] = {
        "machine": machine,
        "command": sys.argv,
        "quick": options.quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "process_logs": str(log_dir),
        "sections": {},
        "errors": {},
    }
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "book": lambda: run_book_bench(quick=options.quick),
        "ingest": lambda: run_ingest_bench(quick=options.quick),
        "latency": lambda: _run_trio(run_latency, log_dir, latency),
        "fanout": lambda: _run_trio(run_fanout, log_dir, fanout),
        "memory": lambda: _run_trio(run_memory, log_dir, memory),
    }
    try:
        for section in options.sections:
            out.print(f"\n[bold]{section}[/bold] …")
            started = time.monotonic()
            try:
                result = runs[section]()
            except BenchError as exc:
                results["errors"][section] = str(exc)
                out.print(f"[red]aggtrio bench: {section}: {exc}[/red]", highlight=False)
                continue
            result["elapsed_seconds"] = round(time.monotonic() - started, 1)
            results["sections"][section] = result
            RENDERERS[section](out, result)
    except KeyboardInterrupt:
        out.print("[red]interrupted: the results so far are in the JSON file[/red]")
        results["interrupted"] = True
    machine["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    write_json(options.output, results)
    out.print(f"\nresults: {options.output}; process logs: {log_dir}")
    if results.get("interrupted"):
        return 130
    return 1 if results["errors"] else 0
