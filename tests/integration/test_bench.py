"""`aggtrio bench --quick`: the system sections run end to end, in real processes, and
report plausible numbers. Performance itself is judged by the benchmark, not here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from aggtrio.bench.ingest import (
    COMBINED,
    DELTA_VENUES,
    VENUES,
    Pipeline,
    check_replay,
    record_messages,
    run_ingest_bench,
)
from aggtrio.bench.report import render_ingest

from .harness import ROOT

PERCENTILES = ("p50", "p90", "p99", "p99_9", "max")


def check_latency(section: dict[str, Any]) -> None:
    rows = section["rows"]
    assert {(row["rate"], row["subscribers"]) for row in rows} == {
        (rate, subscribers) for rate in ("realistic", "10x") for subscribers in (1, 10)
    }
    for row in rows:
        for name in ("aggtrio", "floor"):
            stats = row[name]
            assert stats["samples"] > 0, (row["rate"], row["subscribers"], name)
            values = [stats[key] for key in PERCENTILES]
            assert values[0] > 0, values
            assert values == sorted(values), values
            assert stats["messages_per_second"] > 0
        assert row["p50_ratio"] > 0
        assert row["p99_ratio"] > 0
        # Each venue process really sent at its rate (~30 and ~300 messages a second).
        assert 10 < row["venue_messages_per_second"] < 1000
        assert isinstance(row.get("pass", False), bool)


def check_fanout(section: dict[str, Any]) -> None:
    assert [row["subscribers"] for row in section["rows"]] == [10, 100]
    for row in section["rows"]:
        for name in ("aggtrio", "floor"):
            stats = row[name]
            assert stats["messages_per_second"] > 0, (row["subscribers"], name)
            # The same kind of message in both: a 10+10-level Summary of ~600 bytes.
            assert 300 < stats["mean_message_bytes"] < 1500, stats
            assert len(stats["client_cpu_shares"]) == section["client_processes"]
            assert 0 < stats["server_cpu_share"] < 2
        assert row["ratio"] > 0
        assert row["cpu_ratio"] > 0


def check_memory(section: dict[str, Any]) -> None:
    assert 10 < section["idle_mib"] <= section["with_subscribers_mib"] < 1000
    assert section["with_subscribers_messages_per_second"] > 0
    stalled = section["stalled"]
    assert len(stalled["samples_mib"]) >= 3
    assert stalled["start_mib"] <= stalled["max_mib"]
    # The server sent the stalled stream something before its window closed.
    assert stalled["unread_bytes_at_stalled_client"] > 0
    assert stalled["readers_messages_per_second"] > 0


async def test_quick_bench_runs_every_system_section(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "aggtrio", "bench", "--quick"]
    command += ["--only", "latency,fanout,memory", "--output", str(output)]
    with trio.fail_after(100):
        result = await trio.run_process(
            command,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )
    printed = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, printed
    data = json.loads(output.read_text())
    assert data["errors"] == {}
    assert set(data["sections"]) == {"latency", "fanout", "memory"}
    assert data["machine"]["cores"] >= 1
    assert data["machine"]["packages"]["purerpc"]
    check_latency(data["sections"]["latency"])
    check_fanout(data["sections"]["fanout"])
    check_memory(data["sections"]["memory"])
    for title in ("machine:", "Latency", "Fan-out", "Memory"):
        assert title in printed


def test_ingest_recording_exercises_every_delta_venue_without_a_resync() -> None:
    """The recording holds each delta venue's connection as its simulator sends it: the
    acks, one snapshot per symbol, then deltas whose sequence numbers and checksums the
    adapters accept, interleaved with the other venues. A resync or a malformed message
    would mean the recording, not the service, is wrong."""
    seconds = 10.0
    recording = record_messages(seconds, VENUES)
    pipeline = Pipeline(VENUES)
    pipeline.feed(recording)
    row = {
        "books_published": pipeline.books,
        "resyncs": pipeline.resyncs,
        "malformed": pipeline.malformed,
    }
    assert check_replay(row, VENUES) == []
    assert pipeline.aggregator.summaries_published > 0
    for venue in DELTA_VENUES:
        own = [entry for entry in recording if entry[0] == venue]
        # Snapshots: Kraken's, Coinbase's and Bybit's "type", OKX's "action".
        assert sum(message.count(':"snapshot"') for _, message in own) == 2, venue
        # About 20 changes a second per symbol; some leave the channel's levels unchanged.
        assert 10 * seconds < len(own) < 2 * 25 * seconds, (venue, len(own))
        # Alone, too: the venue's messages need nothing from the others'.
        alone = Pipeline([venue])
        alone.feed(own)
        assert alone.books[venue] > len(own) // 2, venue
        assert not alone.resyncs, venue
        assert not alone.malformed, venue
        # And the check has teeth: without one of its deltas, the venue's adapter resyncs.
        gap = [entry for entry in recording if entry is not own[20]]
        broken = Pipeline(VENUES)
        broken.feed(gap)
        assert broken.resyncs[venue] >= 1, venue
    # OKX batches each symbol's changes into one push per 100 ms.
    okx = sum(venue == "okx" for venue, _ in recording)
    assert okx <= 2 * 10 * seconds + 4
    # Interleaved in arrival order: every venue shows up early, not one venue after another.
    first = {venue for venue, _ in recording[: len(recording) // 10]}
    assert first == set(VENUES)


def test_quick_ingest_bench_reports_each_venue_and_the_earlier_pair() -> None:
    result = run_ingest_bench(quick=True)
    assert list(result["venues"]) == list(VENUES)
    assert set(result["combined"]) == set(COMBINED) == {"binance+bitstamp"}
    pair = result["combined"]["binance+bitstamp"]
    assert pair["messages"] == sum(
        result["venues"][v]["messages"] for v in COMBINED["binance+bitstamp"]
    )
    assert result["messages"] == sum(row["messages"] for row in result["venues"].values())
    for row in [result, pair, *result["venues"].values()]:
        assert row["us_per_message"] > row["floor_us_per_message"] > 0
        assert row["ratio"] > 1
        assert not row["resyncs"]
        assert not row["malformed"]
    console = Console(record=True, width=160)
    render_ingest(console, result)
    printed = console.export_text()
    for label in (*VENUES, "binance+bitstamp (together)", "all 6 venues"):
        assert label in printed
