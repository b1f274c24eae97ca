"""The `watch` and `demo` commands as users run them, in real processes."""

from __future__ import annotations

import subprocess
import sys

import orjson
import trio

from aggtrio.simulator import SimulatedVenue

from .harness import ROOT, ServerProcess


async def run_cli(*args: str, within: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(within):
        return await trio.run_process(
            [sys.executable, "-m", "aggtrio", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )


async def test_watch_json_prints_one_summary_per_line(
    server: ServerProcess, simulators: dict[str, SimulatedVenue]
) -> None:
    result = await run_cli(
        "watch", "ETH-BTC", "--json", "--count", "3", "--server", f"127.0.0.1:{server.port}"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 3
    for line in lines:
        summary = orjson.loads(line)
        assert summary["symbol"] == "ETHBTC"
        bids = [level["price"] for level in summary["bids"]]
        assert bids == sorted(bids, reverse=True)
        assert len(summary["bids"]) <= 10


async def test_watch_unknown_symbol_is_one_line_and_nonzero(server: ServerProcess) -> None:
    result = await run_cli("watch", "XRPEUR", "--server", f"127.0.0.1:{server.port}")
    assert result.returncode == 1
    err = result.stderr.decode().strip().splitlines()
    assert len(err) == 1, err
    assert "XRPEUR" in err[0]
    assert "Traceback" not in result.stderr.decode()


async def test_watch_unreachable_server_is_one_line_and_nonzero() -> None:
    with trio.socket.socket() as sock:  # a port that is surely closed: bound, never listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = await run_cli("watch", "ETHBTC", "--server", f"127.0.0.1:{port}")
    assert result.returncode == 1
    err = result.stderr.decode().strip().splitlines()
    assert len(err) == 1, err
    assert "cannot reach" in err[0]


async def test_demo_runs_offline_and_merges_all_six_venues() -> None:
    result = await run_cli("demo", "--json", "--count", "60", "--port", "0", within=60)
    assert result.returncode == 0, result.stderr
    summaries = [orjson.loads(line) for line in result.stdout.decode().splitlines()]
    assert len(summaries) == 60
    six = {"binance", "bitstamp", "kraken", "coinbase", "okx", "bybit"}
    assert any(set(s["live_exchanges"]) == six for s in summaries)
    venues = {level["exchange"] for s in summaries for level in [*s["bids"], *s["asks"]]}
    assert len(venues) >= 4, venues  # one market, each venue's own noise: most reach the top


async def test_serve_on_a_taken_port_is_one_line_and_nonzero(server: ServerProcess) -> None:
    result = await run_cli("serve", "--port", str(server.port))
    assert result.returncode == 1
    err = result.stderr.decode().strip().splitlines()
    assert err == [
        f"aggtrio serve: error: cannot listen on 127.0.0.1:{server.port}: Address already in use"
    ]
