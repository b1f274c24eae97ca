"""The real CLI refuses bad values with one readable line and status 2, never a traceback.

Every case runs ``python -m aggtrio …`` in its own process; all of them are started at once
(each Python start costs a fraction of a second) and the tests read the collected results.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import attrs
import pytest

from aggtrio.simulator.faults import FAULT_KINDS

TIMEOUT = 30.0  # a case that does not fail fast would be serving: stop it and fail the test


@attrs.frozen
class Case:
    args: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict)
    # Text the error line must contain: what was wrong, and where it came from.
    mentions: tuple[str, ...] = ()


@attrs.frozen
class Result:
    returncode: int | None
    stdout: str
    stderr: str


BAD_VALUES: dict[str, Case] = {
    "unknown venue": Case(("serve", "--venues", "foo"), mentions=("--venues", "foo", "binance")),
    "bad symbol": Case(("serve", "--symbols", "ETH BTC"), mentions=("--symbols", "ETH BTC")),
    "port out of range": Case(("serve", "--port", "70000"), mentions=("--port", "70000")),
    "http venue url": Case(
        ("serve", "--venue-url", "binance=http://x"), mentions=("--venue-url", "http://x")
    ),
    "depth zero": Case(("serve", "--depth", "0"), mentions=("--depth", "0")),
    "no subscribers allowed": Case(
        ("serve", "--max-subscribers", "0"), mentions=("--max-subscribers", "0", "at least 1")
    ),
    "bad subscriber limit in env": Case(
        ("serve",),
        env={"AGGTRIO_MAX_SUBSCRIBERS": "lots"},
        mentions=("AGGTRIO_MAX_SUBSCRIBERS", "lots"),
    ),
    "resend interval zero": Case(
        ("serve", "--resend-interval", "0"), mentions=("--resend-interval", "0", "out of range")
    ),
    "bad resend interval in env": Case(
        ("serve",),
        env={"AGGTRIO_RESEND_INTERVAL": "soon"},
        mentions=("AGGTRIO_RESEND_INTERVAL", "soon"),
    ),
    "no workers": Case(("serve", "--workers", "0"), mentions=("--workers", "0", "1-64")),
    "workers not a number": Case(("serve", "--workers", "abc"), mentions=("--workers", "abc")),
    "bad workers in env": Case(
        ("serve",), env={"AGGTRIO_WORKERS": "abc"}, mentions=("AGGTRIO_WORKERS", "abc")
    ),
    "workers on port 0": Case(
        ("serve", "--workers", "2", "--port", "0"), mentions=("2 workers", "port 0")
    ),
    "bad watch server": Case(("watch", "--server", "nonsense"), mentions=("nonsense",)),
    "unknown simulated venue": Case(
        ("simulate", "--venue", "nasdaq=9001"), mentions=("--venue", "nasdaq", "binance")
    ),
    "bad simulated port": Case(("simulate", "--venue", "binance=x"), mentions=("--venue", "x")),
    "unknown fault": Case(
        ("simulate", "--fault", "binance:explode"), mentions=("--fault", "explode", "mute")
    ),
    "fault without a venue": Case(("simulate", "--fault", "mute"), mentions=("--fault", "mute")),
    "fault on a venue not simulated": Case(
        ("simulate", "--venue", "binance=0", "--fault", "bitstamp:mute"),
        mentions=("--fault", "bitstamp", "not simulated"),
    ),
    "bad fault value": Case(
        ("simulate", "--fault", "binance:garbage=2"), mentions=("--fault", "garbage", "'2'")
    ),
    "fault value missing": Case(
        ("simulate", "--fault", "binance:drop-every"), mentions=("--fault", "drop-every")
    ),
    "chaos zero": Case(("simulate", "--chaos", "0"), mentions=("--chaos", "0")),
    "chaos not a number": Case(("simulate", "--chaos", "often"), mentions=("--chaos", "often")),
    "metrics port out of range": Case(
        ("serve", "--metrics-port", "70000"), mentions=("--metrics-port", "70000")
    ),
    "workers with metrics on port 0": Case(
        ("serve", "--workers", "2", "--port", "50999", "--metrics-port", "0"),
        mentions=("--metrics-port", "2 workers"),
    ),
    "tls cert without key": Case(
        ("serve", "--tls-cert", "cert.pem"), mentions=("--tls-cert", "--tls-key", "both")
    ),
    "missing tls cert": Case(
        ("serve", "--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"),
        mentions=("--tls-cert", "/nonexistent/cert.pem", "no such file"),
    ),
    "tls cert that is no certificate": Case(
        ("serve", "--tls-cert", "pyproject.toml", "--tls-key", "pyproject.toml"),
        mentions=("--tls-cert", "pyproject.toml", "cannot load"),
    ),
    "missing watch ca": Case(
        ("watch", "--ca", "/nonexistent/ca.pem"), mentions=("--ca", "/nonexistent/ca.pem")
    ),
    "bad port in env": Case(
        ("serve",), env={"AGGTRIO_PORT": "abc"}, mentions=("AGGTRIO_PORT", "abc")
    ),
}

OTHER: dict[str, Case] = {
    "version": Case(("--version",)),
    "serve help": Case(("serve", "--help")),
    "simulate help": Case(("simulate", "--help")),
}


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    # As a user runs it: none of our variables set unless the case sets them.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGGTRIO_") and name != "PYTHONWARNINGS"
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def results() -> dict[str, Result]:
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "aggtrio", *case.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(case.env),
            text=True,
        )
        for name, case in {**BAD_VALUES, **OTHER}.items()
    }
    collected: dict[str, Result] = {}
    try:
        for name, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                collected[name] = Result(None, stdout, stderr)
            else:
                collected[name] = Result(proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return collected


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_bad_value_exits_2_with_one_line_naming_the_problem(
    results: dict[str, Result], name: str
) -> None:
    case, result = BAD_VALUES[name], results[name]
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("aggtrio")
    assert "error" in line
    for text in case.mentions:
        assert text in line
    assert result.stdout == ""


def test_version_exits_0(results: dict[str, Result]) -> None:
    result = results["version"]
    assert result.returncode == 0, result
    assert result.stdout.startswith("aggtrio ")
    assert result.stdout.split()[1][0].isdigit()


def test_serve_help_mentions_every_flag(results: dict[str, Result]) -> None:
    result = results["serve help"]
    assert result.returncode == 0, result
    for flag in (
        "--host",
        "--port",
        "--symbols",
        "--venues",
        "--venue-url",
        "--depth",
        "--max-subscribers",
        "--resend-interval",
        "--log-level",
        "--workers",
        "--metrics-port",
        "--tls-cert",
        "--tls-key",
    ):
        assert flag in result.stdout
    assert "--internal-worker" not in result.stdout  # the supervisor's, not the operator's


def test_simulate_help_documents_faults(results: dict[str, Result]) -> None:
    result = results["simulate help"]
    assert result.returncode == 0, result
    for text in ("--fault", "VENUE:KIND[=VALUE]", "--chaos", *FAULT_KINDS):
        assert text in result.stdout
