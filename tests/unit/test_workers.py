"""The pure parts of `serve --workers`: restart policy, exit reasons, worker command lines."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import attrs
import pytest

from aggtrio import cli
from aggtrio.cli import build_parser, serve_config_from_args
from aggtrio.config import ConfigError, ServeConfig
from aggtrio.workers import (
    RestartPolicy,
    Supervisor,
    WorkersFailedError,
    check_shareable,
    describe_exit,
    parse_worker_slot,
    worker_command,
    worker_metrics_port,
)

# --- restart policy ---------------------------------------------------------------------------

POLICY = RestartPolicy(initial=0.5, maximum=4.0, stable_after=10.0, give_up_after=6)


def delays(policy: RestartPolicy, uptimes: list[float]) -> list[float | None]:
    """The delay chosen after each death, a worker having run `uptimes[i]` s before it."""
    failures = 0
    chosen: list[float | None] = []
    for uptime in uptimes:
        failures = policy.failures_after(failures, uptime)
        chosen.append(policy.delay(failures))
    return chosen


def test_first_restart_is_immediate_then_the_wait_doubles_up_to_the_cap() -> None:
    assert delays(POLICY, [1.0] * 5) == [0.0, 0.5, 1.0, 2.0, 4.0]


def test_the_wait_never_exceeds_the_cap() -> None:
    policy = attrs.evolve(POLICY, give_up_after=10_000)
    chosen = delays(policy, [0.0] * 5000)  # 2**5000 would overflow a float
    assert max(d for d in chosen if d is not None) == policy.maximum


def test_rapid_failures_in_a_row_give_up() -> None:
    assert delays(POLICY, [0.1] * 6) == [0.0, 0.5, 1.0, 2.0, 4.0, None]


def test_a_stable_run_starts_a_new_count() -> None:
    # Four quick deaths, then one after a healthy run: an immediate restart, not a give-up.
    assert delays(POLICY, [0.1, 0.1, 0.1, 0.1, 10.0, 0.1]) == [0.0, 0.5, 1.0, 2.0, 0.0, 0.5]


def test_a_worker_that_dies_after_running_well_is_restarted_at_once_forever() -> None:
    assert delays(POLICY, [60.0] * 100) == [0.0] * 100


def test_default_policy_gives_up_within_seconds_not_minutes() -> None:
    policy = RestartPolicy()
    chosen = delays(policy, [0.0] * policy.give_up_after)
    assert chosen[-1] is None
    assert 0 < sum(d for d in chosen if d is not None) < 15


# --- exit reasons -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (0, "exited with status 0"),
        (3, "exited with status 3"),
        (-signal.SIGKILL, "was killed by SIGKILL"),
        (-signal.SIGSEGV, "was killed by SIGSEGV"),
        (-200, "was killed by signal 200"),
    ],
)
def test_exit_is_described_by_status_or_signal(returncode: int, text: str) -> None:
    assert describe_exit(returncode) == text


# --- worker slots and command lines -------------------------------------------------------------


@pytest.mark.parametrize(("text", "slot"), [("1/2", (1, 2)), ("2/2", (2, 2)), ("7/64", (7, 64))])
def test_worker_slot_is_parsed(text: str, slot: tuple[int, int]) -> None:
    assert parse_worker_slot(text) == slot


@pytest.mark.parametrize("text", ["", "1", "0/2", "3/2", "a/b", "1/2/3", "-1/2"])
def test_bad_worker_slot_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="I/N"):
        parse_worker_slot(text)


def test_port_0_cannot_be_shared() -> None:
    with pytest.raises(ConfigError, match="fixed port"):
        check_shareable(ServeConfig(port=0), 2)
    check_shareable(ServeConfig(port=50051), 2)


def test_each_worker_serves_metrics_on_its_own_port() -> None:
    config = ServeConfig(port=50051, metrics_port=9100)
    assert [worker_metrics_port(config, i) for i in (1, 2, 3)] == [9100, 9101, 9102]
    assert worker_metrics_port(ServeConfig(), 1) is None
    with pytest.raises(ConfigError, match="fixed --metrics-port"):
        check_shareable(ServeConfig(port=50051, metrics_port=0), 2)
    with pytest.raises(ConfigError, match="no room for 3 workers"):
        check_shareable(ServeConfig(port=50051, metrics_port=65534), 3)
    check_shareable(ServeConfig(port=50051, metrics_port=65534), 2)
    # Worker 2's metrics port would be the gRPC port.
    with pytest.raises(ConfigError, match="among the 2 workers' metrics ports 50050-50051"):
        check_shareable(ServeConfig(port=50051, metrics_port=50050), 2)
    check_shareable(ServeConfig(port=50051, metrics_port=50049), 2)
    check_shareable(ServeConfig(port=50051, metrics_port=50052), 2)


# Every field but reuse_port, which a worker sets for itself, set to something not default.
EVERYTHING = ServeConfig(
    host="::1",
    port=50123,
    symbols=("BTCUSDT", "ETHBTC"),
    venues=("bitstamp",),
    venue_urls={"binance": "ws://127.0.0.1:9001", "bitstamp": "wss://example.com:8443"},
    depth=7,
    log_level="DEBUG",
    log_format="json",
    liveness_timeout=2.5,
    max_subscribers=12,
    resend_interval=0.1,
    metrics_port=9100,
    tls_cert=Path("/etc/aggtrio/cert.pem"),
    tls_key=Path("/etc/aggtrio/key.pem"),
)


def config_of(command: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ServeConfig:
    """What a worker started with `command` parses, in an environment and with a config
    file that would mislead it if it read them: it must take its flags alone."""
    assert command[:4] == [sys.executable, "-m", "aggtrio", "serve"]
    monkeypatch.setenv("AGGTRIO_DEPTH", "999")
    monkeypatch.setenv("AGGTRIO_VENUE_URL", "binance=ws://elsewhere:1")
    # Options a default configuration leaves unset, so no flag for them reaches the worker.
    monkeypatch.setenv("AGGTRIO_LIVENESS_TIMEOUT", "33")
    monkeypatch.setenv("AGGTRIO_TLS_CERT", "/misleading/cert.pem")
    config_file = tmp_path / "aggtrio.toml"
    config_file.write_text("[serve]\nmetrics_port = 9999\nmax_subscribers = 5\n")
    monkeypatch.setenv("AGGTRIO_CONFIG", str(config_file))
    return serve_config_from_args(build_parser().parse_args(command[3:]))


@pytest.mark.parametrize("config", [EVERYTHING, ServeConfig(venue_urls={"binance": "ws://h:1"})])
def test_a_worker_runs_exactly_the_supervisors_configuration(
    config: ServeConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    command = worker_command(config, 2, 3)
    assert "--internal-worker=2/3" in command
    # All of it, but its own metrics port.
    expected = attrs.evolve(config, metrics_port=worker_metrics_port(config, 2))
    assert config_of(command, monkeypatch, tmp_path) == expected


def test_every_configuration_field_reaches_the_workers() -> None:
    # A new ServeConfig field fails this test until EVERYTHING above sets it (and the
    # settings table has an option for it, or the round trip above fails).
    defaults = ServeConfig()
    for field in attrs.fields(ServeConfig):
        if field.name != "reuse_port":
            assert getattr(EVERYTHING, field.name) != getattr(defaults, field.name), field.name


def test_a_host_that_looks_like_a_flag_stays_a_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = ServeConfig(host="-weird")
    assert config_of(worker_command(config, 1, 2), monkeypatch, tmp_path).host == "-weird"


# --- the command line -------------------------------------------------------------------------


def test_a_supervisor_that_gave_up_is_one_line_and_status_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # (test_workers.py makes real workers fail; here only the CLI's report of it.)
    async def gives_up(self: Supervisor) -> int:
        raise WorkersFailedError("worker 1/2 failed 5 times in a row; giving up")

    monkeypatch.setattr(Supervisor, "run", gives_up)
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--workers", "2", "--port", "50123"])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "aggtrio serve: error: worker 1/2 failed 5 times in a row; giving up\n"
    )
