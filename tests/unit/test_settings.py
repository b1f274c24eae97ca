"""The settings table: where each value comes from, every kind of bad input, --print-config."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest

from aggtrio import settings
from aggtrio.cli import build_parser
from aggtrio.config import ConfigError, ServeConfig, WatchConfig
from aggtrio.settings import (
    SERVE_OPTIONS,
    WATCH_OPTIONS,
    ConfigFile,
    Resolved,
    load_config_file,
    parse_config_file,
    resolve,
    serve_config,
    watch_config,
)

ROOT = Path(__file__).resolve().parents[2]


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def resolve_serve(
    *argv: str, env: dict[str, str] | None = None, toml: str | None = None
) -> Resolved:
    config_file = None if toml is None else parse_config_file("aggtrio.toml", toml)
    return resolve("serve", serve_args(*argv), env or {}, config_file)


def error_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- precedence -------------------------------------------------------------------------------


def test_flag_beats_environment_beats_file_beats_default() -> None:
    toml = "[serve]\nport = 6000\ndepth = 7\nhost = '0.0.0.0'\n"
    env = {"AGGTRIO_PORT": "6001", "AGGTRIO_DEPTH": "8"}
    resolved = resolve_serve("--port", "6002", env=env, toml=toml)
    assert resolved.values["port"] == 6002
    assert resolved.values["depth"] == 8
    assert resolved.values["host"] == "0.0.0.0"
    assert resolved.values["max_subscribers"] == 1000
    assert resolved.sources["port"] == "--port"
    assert resolved.sources["depth"] == "AGGTRIO_DEPTH"
    assert resolved.sources["host"] == "aggtrio.toml"
    assert resolved.sources["max_subscribers"] == "default"


def test_a_flag_replaces_a_whole_list_or_table_from_elsewhere() -> None:
    toml = '[serve]\nvenue_urls = { binance = "ws://file:1", bitstamp = "ws://file:2" }\n'
    resolved = resolve_serve("--venue-url", "bitstamp=ws://flag:3", toml=toml)
    assert dict(resolved.values["venue_urls"]) == {"bitstamp": "ws://flag:3"}


def test_every_kind_reads_the_same_value_from_flag_environment_and_file() -> None:
    from_flags = serve_config(
        resolve_serve(
            "--symbols=eth/btc,BTC-USDT",
            "--venues=bitstamp",
            "--venue-url=bitstamp=ws://127.0.0.1:9002",
            "--liveness-timeout=2.5",
            "--log-level=debug",
            "--log-format=JSON",
            "--tls-cert=c.pem",
            "--tls-key=k.pem",
        )
    )
    from_env = serve_config(
        resolve_serve(
            env={
                "AGGTRIO_SYMBOLS": "eth/btc,BTC-USDT",
                "AGGTRIO_VENUES": "bitstamp",
                "AGGTRIO_VENUE_URL": "bitstamp=ws://127.0.0.1:9002",
                "AGGTRIO_LIVENESS_TIMEOUT": "2.5",
                "AGGTRIO_LOG_LEVEL": "debug",
                "AGGTRIO_LOG_FORMAT": "JSON",
                "AGGTRIO_TLS_CERT": "c.pem",
                "AGGTRIO_TLS_KEY": "k.pem",
            }
        )
    )
    from_file = serve_config(
        resolve_serve(
            toml="""
            [serve]
            symbols = ["eth/btc", "BTC-USDT"]
            venues = "bitstamp"
            venue_urls = { bitstamp = "ws://127.0.0.1:9002" }
            liveness_timeout = 2.5
            log_level = "debug"
            log_format = "JSON"
            tls_cert = "c.pem"
            tls_key = "k.pem"
            """
        )
    )
    assert from_flags == from_env == from_file
    assert from_file.symbols == ("ETHBTC", "BTCUSDT")
    assert from_file.log_format == "json"
    assert from_file.tls_cert == Path("c.pem")


def test_a_whole_number_of_seconds_in_the_file_is_accepted() -> None:
    assert resolve_serve(toml="[serve]\nresend_interval = 2\n").values["resend_interval"] == 2.0


def test_config_file_from_flag_or_else_environment(tmp_path: Path) -> None:
    by_flag, by_env = tmp_path / "flag.toml", tmp_path / "env.toml"
    by_flag.write_text("[serve]\nport = 1111\n")
    by_env.write_text("[serve]\nport = 2222\n")
    env = {"AGGTRIO_CONFIG": str(by_env)}
    assert load_config_file(None, {}) is None
    loaded = load_config_file(str(by_flag), env)
    assert loaded == ConfigFile(str(by_flag), {"serve": {"port": 1111}})
    loaded = load_config_file(None, env)
    assert loaded == ConfigFile(str(by_env), {"serve": {"port": 2222}})


def test_watch_reads_its_own_section_and_the_old_server_variable() -> None:
    args = build_parser().parse_args(["watch"])
    file = parse_config_file("f.toml", "[serve]\nport = 1\n[watch]\nserver = 'a:1'\ntls = true\n")
    assert watch_config(resolve("watch", args, {}, file)) == WatchConfig(server="a:1", tls=True)
    old = {"AGGTRIO_SERVER": "b:2"}
    resolved = resolve("watch", args, old, file)
    assert (resolved.values["server"], resolved.sources["server"]) == ("b:2", "AGGTRIO_SERVER")
    both = {**old, "AGGTRIO_WATCH_SERVER": "c:3"}
    assert resolve("watch", args, both, None).values["server"] == "c:3"
    no_tls = build_parser().parse_args(["watch", "--no-tls"])
    assert resolve("watch", no_tls, {"AGGTRIO_WATCH_TLS": "yes"}, file).values["tls"] is False


# --- errors name their source, in one line ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--port", "x"], {}, "--port: port 'x' is not a number"),
        ([], {"AGGTRIO_PORT": "abc"}, "AGGTRIO_PORT: port 'abc' is not a number"),
        ([], {"AGGTRIO_VENUES": "foo"}, "AGGTRIO_VENUES: unknown venue 'foo'"),
        ([], {"AGGTRIO_VENUE_URL": "binance"}, "AGGTRIO_VENUE_URL: venue URL 'binance'"),
        ([], {"AGGTRIO_LOG_FORMAT": "xml"}, "AGGTRIO_LOG_FORMAT: log format 'xml' is not one"),
        ([], {"AGGTRIO_METRICS_PORT": "-1"}, "AGGTRIO_METRICS_PORT: port -1 is out of range"),
        ([], {"AGGTRIO_TLS_KEY": " "}, "AGGTRIO_TLS_KEY: file name is empty"),
    ],
)
def test_a_bad_flag_or_variable_is_named(
    argv: list[str], env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_serve(*argv, env=env)
    assert error_of(info).startswith(expected)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[serve]\ndepth = 0\n", "aggtrio.toml: [serve] depth: depth 0 is out of range 1-1000"),
        ("[serve]\nport = '50051'\n", "aggtrio.toml: [serve] port: expected an integer, not a"),
        ("[serve]\nport = true\n", "aggtrio.toml: [serve] port: expected an integer, not a b"),
        ("[serve]\nsymbols = [1]\n", "aggtrio.toml: [serve] symbols: expected an array of str"),
        ("[serve]\nvenue_urls = 'x'\n", "aggtrio.toml: [serve] venue_urls: expected a table"),
        ("[serve]\nvenue_urls = {kucoin='ws://x'}\n", "aggtrio.toml: [serve] venue_urls: unkn"),
        ("[watch]\ntls = 'yes'\n", "aggtrio.toml: [watch] tls: expected true or false"),
        ("[watch]\nserver = 'nope'\n", "aggtrio.toml: [watch] server: server address 'nope'"),
        (
            "[serve]\nprot = 1\n",
            "aggtrio.toml: [serve] unknown setting 'prot' (did you mean port?)",
        ),
        ("[serve]\nzzz = 1\n", "aggtrio.toml: [serve] unknown setting 'zzz' (known: host, port,"),
        ("[sever]\nport = 1\n", "aggtrio.toml: unknown section 'sever' (did you mean serve?)"),
        ("serve = 1\n", "aggtrio.toml: serve must be a [serve] table"),
        ("[serve]\nport = \n", "aggtrio.toml: not valid TOML: "),
    ],
)
def test_a_bad_config_file_is_named_with_section_and_key(toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_file("aggtrio.toml", toml)
    assert error_of(info).startswith(expected)


def test_a_typo_in_another_commands_section_is_reported_too() -> None:
    with pytest.raises(ConfigError, match=r"\[watch\] unknown setting .sever."):
        resolve_serve(toml="[serve]\nport = 1\n[watch]\nsever = 'a:1'\n")


@pytest.mark.parametrize("env_set", [False, True])
def test_an_unreadable_config_file_names_where_its_name_came_from(
    tmp_path: Path, env_set: bool
) -> None:
    missing = str(tmp_path / "missing.toml")
    flag = None if env_set else missing
    with pytest.raises(ConfigError) as info:
        load_config_file(flag, {"AGGTRIO_CONFIG": missing} if env_set else {})
    source = "AGGTRIO_CONFIG" if env_set else "--config"
    assert error_of(info) == f"{source}: cannot read {missing}: No such file or directory"


def test_a_config_file_that_is_not_text_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "aggtrio.toml"
    binary.write_bytes(b"\xff\xfe[serve]")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config_file(str(binary), {})


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--metrics-port", "50051"], "the metrics port and the gRPC port are both 50051"),
        (["--tls-cert", "c.pem"], "TLS needs both --tls-cert and --tls-key; --tls-key is not set"),
        (["--tls-key", "k.pem"], "TLS needs both --tls-cert and --tls-key; --tls-cert is not set"),
    ],
)
def test_settings_that_conflict_are_refused(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        serve_config(resolve_serve(*argv))
    assert expected in error_of(info)


def test_port_zero_for_both_servers_is_allowed() -> None:
    config = serve_config(resolve_serve("--port", "0", "--metrics-port", "0"))
    assert (config.port, config.metrics_port) == (0, 0)


# --- --print-config ---------------------------------------------------------------------------


def test_print_config_loads_back_as_the_same_configuration(tmp_path: Path) -> None:
    toml = '[serve]\nsymbols = ["ETHBTC", "BTCUSDT"]\nvenue_urls = { binance = "ws://h:1" }\n'
    env = {"AGGTRIO_RESEND_INTERVAL": "0.1", "AGGTRIO_HOST": 'a "quoted" \\ host\x7f'}
    original = resolve_serve("--workers", "3", "--log-format", "json", env=env, toml=toml)
    printed = original.to_toml()
    reloaded = resolve("serve", serve_args(), {}, parse_config_file("printed.toml", printed))
    assert reloaded.values == original.values
    assert serve_config(reloaded) == serve_config(original)
    # Each value's line says where it came from; unset options are comments.
    lines = {
        m[1]: m[0] for m in map(re.compile(r"^(?:# )?(\w+)\b.*").match, printed.splitlines()) if m
    }
    assert lines["workers"].endswith("# --workers")
    assert lines["resend_interval"].endswith("# AGGTRIO_RESEND_INTERVAL")
    assert lines["symbols"].endswith("# aggtrio.toml")
    assert lines["depth"] == "depth = 10  # default"
    assert lines["liveness_timeout"].startswith("# liveness_timeout: not set")
    assert "liveness_timeout" not in tomllib.loads(printed)["serve"]


def test_print_config_of_the_defaults_is_the_default_configuration() -> None:
    printed = resolve_serve().to_toml()
    reloaded = resolve("serve", serve_args(), {}, parse_config_file("p.toml", printed))
    assert serve_config(reloaded) == ServeConfig()
    assert all(source == "p.toml" or value is None for value, source in _pairs(reloaded))


def _pairs(resolved: Resolved) -> list[tuple[object, str]]:
    return [(resolved.values[name], resolved.sources[name]) for name in resolved.values]


# --- the table itself -------------------------------------------------------------------------


def test_every_serve_config_field_is_an_option_with_the_same_default() -> None:
    options = {option.name: option for option in SERVE_OPTIONS}
    defaults = ServeConfig()
    for field in attrs.fields(ServeConfig):
        if field.name == "reuse_port":  # set by the program for its workers, not by operators
            assert field.name not in options
            continue
        assert options[field.name].default == getattr(defaults, field.name), field.name


def test_every_watch_config_field_is_an_option() -> None:
    assert [f.name for f in attrs.fields(WatchConfig)] == [o.name for o in WATCH_OPTIONS]


@pytest.mark.parametrize("options", [SERVE_OPTIONS, WATCH_OPTIONS], ids=["serve", "watch"])
def test_names_flags_and_variables_are_unique_and_spelled_alike(
    options: tuple[settings.Option, ...],
) -> None:
    for option in options:
        assert option.flag == "--" + option.name.replace("_", "-") or option.flag == "--venue-url"
        assert re.fullmatch(r"AGGTRIO_[A-Z_]+", option.env)
    for attribute in ("name", "flag", "env"):
        values = [getattr(option, attribute) for option in options]
        assert len(values) == len(set(values)), attribute


def test_the_readme_tables_are_the_tables_of_options() -> None:
    readme = (ROOT / "README.md").read_text()
    for options in (SERVE_OPTIONS, WATCH_OPTIONS):
        assert settings.markdown_table(options) in readme
    # The script that writes them agrees (run it without --check after changing an option).
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "readme_settings.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("AGGTRIO_PROT", "unknown environment variable AGGTRIO_PROT (did you mean AGGTRIO_PORT?)"),
        ("AGGTRIO_LOGLEVEL", "(did you mean AGGTRIO_LOG_LEVEL?)"),
        ("AGGTRIO_ZZZ", "unknown environment variable AGGTRIO_ZZZ (--help lists them)"),
    ],
)
def test_a_misspelt_variable_is_refused_not_ignored(name: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings.check_environment({name: "1", "AGGTRIO_PORT": "1", "PATH": "/bin"})
    assert expected in error_of(info)


def test_every_known_variable_passes_the_check() -> None:
    settings.check_environment(dict.fromkeys(settings.all_env_names(), "x"))
