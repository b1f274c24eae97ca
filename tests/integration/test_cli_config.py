"""Configuration and log output of the real `aggtrio serve`, in its own processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import trio

from aggtrio.simulator import SimulatedVenue

from .harness import ROOT, ServerProcess, running_server, venue_url_args
from .test_workers import free_port


async def run_aggtrio(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # As a user runs it: none of our variables set unless the test sets them.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGGTRIO_")}
    environ.update(env or {})
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "aggtrio", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
            env=environ,
        )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


async def test_print_config_shows_each_value_and_its_source_and_loads_back(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "aggtrio.toml"
    config_file.write_text('[serve]\nsymbols = ["ETHBTC", "BTCUSDT"]\ndepth = 5\nport = 1\n')
    env = {"AGGTRIO_CONFIG": str(config_file), "AGGTRIO_DEPTH": "7", "AGGTRIO_LOG_FORMAT": "json"}
    result = await run_aggtrio("serve", "--print-config", "--port", "6000", env=env)
    assert (result.returncode, result.stderr) == (0, "")
    printed = tomllib.loads(result.stdout)["serve"]
    assert printed["port"] == 6000
    assert printed["depth"] == 7
    assert printed["symbols"] == ["ETHBTC", "BTCUSDT"]
    assert printed["log_format"] == "json"
    assert printed["host"] == "127.0.0.1"
    lines = result.stdout.splitlines()
    assert "port = 6000  # --port" in lines
    assert "depth = 7  # AGGTRIO_DEPTH" in lines
    assert f'symbols = ["ETHBTC", "BTCUSDT"]  # {config_file}' in lines

    # What it printed is a config file that gives the same configuration.
    printed_file = tmp_path / "printed.toml"
    printed_file.write_text(result.stdout)
    again = await run_aggtrio("serve", "--print-config", "--config", str(printed_file))
    assert again.returncode == 0
    assert tomllib.loads(again.stdout) == tomllib.loads(result.stdout)


async def test_a_bad_config_file_or_variable_is_one_line_and_status_2(tmp_path: Path) -> None:
    bad_value = tmp_path / "bad.toml"
    bad_value.write_text("[serve]\ndepth = 0\n")
    unknown = tmp_path / "typo.toml"
    unknown.write_text("[serve]\nmax_subscriber = 5\n")
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (
            ["serve", "--config", str(bad_value)],
            {},
            f"aggtrio serve: error: {bad_value}: [serve] depth: depth 0 is out of range 1-1000",
        ),
        (
            ["serve"],
            {"AGGTRIO_CONFIG": str(unknown)},
            f"aggtrio serve: error: {unknown}: [serve] unknown setting 'max_subscriber' "
            "(did you mean max_subscribers?)",
        ),
        (
            ["serve", "--config", str(tmp_path / "missing.toml")],
            {},
            f"aggtrio serve: error: --config: cannot read {tmp_path / 'missing.toml'}: "
            "No such file or directory",
        ),
        (
            ["serve"],
            {"AGGTRIO_LOG_FORMAT": "xml"},
            "aggtrio serve: error: AGGTRIO_LOG_FORMAT: log format 'xml' is not one of text, json",
        ),
        (
            ["watch"],
            {"AGGTRIO_WATCH_SERVER": "nowhere"},
            "aggtrio watch: error: AGGTRIO_WATCH_SERVER: server address 'nowhere' has no port; "
            "expected HOST:PORT",
        ),
        (
            ["serve"],
            {"AGGTRIO_MAX_SUBSCRIBER": "5"},
            "aggtrio serve: error: unknown environment variable AGGTRIO_MAX_SUBSCRIBER "
            "(did you mean AGGTRIO_MAX_SUBSCRIBERS?)",
        ),
        (
            ["serve", "--metrics-port", "50051"],
            {},
            "aggtrio serve: error: the metrics port and the gRPC port are both 50051; "
            "give --metrics-port another",
        ),
        (
            ["serve"],
            {"AGGTRIO_TLS_CERT": str(bad_value)},
            "aggtrio serve: error: TLS needs both --tls-cert and --tls-key; --tls-key is not set",
        ),
    ]
    for argv, env, expected in cases:
        result = await run_aggtrio(*argv, env=env)
        assert (result.returncode, result.stdout) == (2, ""), result
        assert result.stderr == expected + "\n"


def json_records(server: ServerProcess) -> list[dict[str, Any]]:
    records = [orjson.loads(line) for line in server.log if line]
    for record in records:
        assert isinstance(record, dict)
        assert {"ts", "level", "logger", "message"} <= set(record)
        assert record["level"] not in ("ERROR", "CRITICAL"), record
    return records


async def test_json_logs_are_one_object_per_line_in_every_process(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    args = ["--workers", "2", "--port", str(free_port()), *venue_url_args(simulators)]
    async with running_server(nursery, [*args, "--log-format", "json"]) as server:
        with trio.fail_after(10):
            await server.wait_for_line('"message":"all 2 workers serving on ')
    processes = {record.get("process") for record in json_records(server)}
    assert processes == {"supervisor", "worker 1/2", "worker 2/2"}
