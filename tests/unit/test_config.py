"""Configuration parsers: each accepts what the docs promise and refuses the rest in one line."""

from __future__ import annotations

import os

import pytest

from aggtrio.cli import build_parser, serve_config_from_args, workers_from_args
from aggtrio.config import (
    MAX_DEPTH,
    ConfigError,
    ServeConfig,
    parse_depth,
    parse_log_level,
    parse_max_subscribers,
    parse_port,
    parse_seconds,
    parse_symbols,
    parse_venue_url,
    parse_venue_urls,
    parse_venues,
    parse_workers,
)
from aggtrio.venues.binance import BinanceAdapter
from aggtrio.venues.bitstamp import BitstampAdapter


def one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(exc.value)
    assert message
    assert "\n" not in message
    return message


# --- port -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "port"), [("0", 0), ("1", 1), ("50051", 50051), ("65535", 65535)])
def test_port_in_range_is_accepted(text: str, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize("text", ["-1", "65536", "70000", "abc", "", "80.5"])
def test_port_out_of_range_or_not_a_number_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_port(text)
    assert text.strip("-") in one_line(info)


# --- venues -----------------------------------------------------------------------------------


def test_venues_are_case_insensitive_and_keep_order() -> None:
    assert parse_venues("Bitstamp, BINANCE") == ("bitstamp", "binance")
    assert parse_venues("binance") == ("binance",)


def test_repeated_venue_is_listed_once() -> None:
    assert parse_venues("binance,Binance,bitstamp") == ("binance", "bitstamp")


@pytest.mark.parametrize("text", ["foo", "binance,nasdaq", ""])
def test_unknown_venue_is_rejected_naming_the_known_ones(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_venues(text)
    message = one_line(info)
    assert "binance" in message
    assert "bitstamp" in message


def test_unknown_venue_message_names_the_bad_venue() -> None:
    with pytest.raises(ConfigError, match="foo"):
        parse_venues("binance,foo")


# --- venue URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("binance=ws://127.0.0.1:9001", ("binance", "ws://127.0.0.1:9001")),
        ("binance=ws://127.0.0.1:9001/", ("binance", "ws://127.0.0.1:9001")),
        ("bitstamp=wss://host", ("bitstamp", "wss://host")),
        ("BITSTAMP = wss://ws.example.net:443 ", ("bitstamp", "wss://ws.example.net:443")),
        ("binance=ws://[::1]:9001", ("binance", "ws://[::1]:9001")),
    ],
)
def test_venue_url_accepts_a_ws_base_endpoint(text: str, expected: tuple[str, str]) -> None:
    assert parse_venue_url(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ws://127.0.0.1:9001", "NAME=URL"),
        ("binance", "NAME=URL"),
        ("nasdaq=wss://ws.nasdaq.com", "unknown venue"),
        ("=ws://127.0.0.1:9001", "unknown venue"),
        ("binance=http://x", "ws://"),
        ("binance=https://stream.binance.com", "ws://"),
        ("binance=127.0.0.1:9001", "ws://"),
        ("binance=ws://127.0.0.1:9001/stream", "base endpoint"),
        ("binance=ws://127.0.0.1:9001?streams=ethbtc", "base endpoint"),
        ("binance=ws://127.0.0.1:9001#top", "base endpoint"),
        ("binance=ws://127.0.0.1:99999", "port"),
        ("binance=ws://127.0.0.1:abc", "port"),
        ("binance=ws://127.0.0.1:", "port"),
        ("binance=ws://", "no host"),
        ("binance=ws://:9001", "no host"),
    ],
)
def test_venue_url_rejects_anything_but_a_ws_base_endpoint(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_venue_url(text)
    assert reason in one_line(info)


def test_several_venue_urls_map_by_venue() -> None:
    assert parse_venue_urls(["binance=ws://127.0.0.1:9001", "bitstamp=ws://127.0.0.1:9002"]) == {
        "binance": "ws://127.0.0.1:9001",
        "bitstamp": "ws://127.0.0.1:9002",
    }


# --- depth, log level, symbols ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "depth"), [("1", 1), ("10", 10), (str(MAX_DEPTH), MAX_DEPTH)])
def test_depth_in_range_is_accepted(text: str, depth: int) -> None:
    assert parse_depth(text) == depth


@pytest.mark.parametrize("text", ["0", "-1", str(MAX_DEPTH + 1), "ten", "", "2.5"])
def test_depth_out_of_range_or_not_a_number_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="depth") as info:
        parse_depth(text)
    one_line(info)


@pytest.mark.parametrize(
    ("text", "level"),
    [("debug", "DEBUG"), ("INFO", "INFO"), (" Warning ", "WARNING"), ("error", "ERROR")],
)
def test_log_level_is_case_insensitive(text: str, level: str) -> None:
    assert parse_log_level(text) == level


@pytest.mark.parametrize("text", ["verbose", "", "10", "warn"])
def test_unknown_log_level_is_rejected_naming_the_known_ones(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_log_level(text)
    assert "DEBUG" in one_line(info)


@pytest.mark.parametrize(("text", "limit"), [("1", 1), ("1000", 1000), (" 50000 ", 50000)])
def test_max_subscribers_of_at_least_one_is_accepted(text: str, limit: int) -> None:
    assert parse_max_subscribers(text) == limit


@pytest.mark.parametrize("text", ["0", "-5", "many", "", "2.5"])
def test_max_subscribers_below_one_or_not_a_whole_number_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="subscriber limit") as info:
        parse_max_subscribers(text)
    assert text.strip() in one_line(info)


@pytest.mark.parametrize(("text", "seconds"), [("1", 1.0), ("0.05", 0.05), (" 2.5 ", 2.5)])
def test_seconds_above_zero_are_accepted(text: str, seconds: float) -> None:
    assert parse_seconds(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1", "soon", "", "nan", "inf", "86400"])
def test_seconds_of_zero_or_less_or_not_a_number_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_seconds(text)
    one_line(info)


@pytest.mark.parametrize(("text", "workers"), [("1", 1), ("2", 2), (" 64 ", 64)])
def test_workers_from_one_to_the_maximum_are_accepted(text: str, workers: int) -> None:
    assert parse_workers(text) == workers


@pytest.mark.parametrize("text", ["0", "-2", "65", "abc", "", "2.5"])
def test_workers_out_of_range_or_not_a_whole_number_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="worker count") as info:
        parse_workers(text)
    assert text.strip() in one_line(info)


def test_bad_symbol_is_a_config_error() -> None:
    assert parse_symbols("eth/btc,BTC-USDT") == ("ETHBTC", "BTCUSDT")
    with pytest.raises(ConfigError) as info:
        parse_symbols("ETHBTC,ETH BTC")
    assert "ETH BTC" in one_line(info)


# --- ServeConfig ------------------------------------------------------------------------------


def test_base_url_falls_back_to_the_adapter_default() -> None:
    config = ServeConfig()
    assert config.base_url("binance") == BinanceAdapter.default_url
    assert config.base_url("bitstamp") == BitstampAdapter.default_url


def test_base_url_uses_the_replacement_for_that_venue_only() -> None:
    config = ServeConfig(venue_urls={"binance": "ws://127.0.0.1:9001"})
    assert config.base_url("binance") == "ws://127.0.0.1:9001"
    assert config.base_url("bitstamp") == BitstampAdapter.default_url


def test_config_venue_urls_cannot_be_changed_after_construction() -> None:
    urls = {"binance": "ws://127.0.0.1:9001"}
    config = ServeConfig(venue_urls=urls)
    urls["binance"] = "ws://elsewhere:1"
    assert config.base_url("binance") == "ws://127.0.0.1:9001"
    with pytest.raises(TypeError):
        config.venue_urls["bitstamp"] = "ws://127.0.0.1:9002"  # type: ignore[index]


def test_defaults() -> None:
    config = ServeConfig()
    assert config.port == 50051
    assert config.symbols == ("ETHBTC",)
    assert config.default_symbol == "ETHBTC"
    assert config.venues == ("binance", "bitstamp")
    assert config.depth == 10
    assert config.max_subscribers == 1000
    assert config.resend_interval == 1.0
    assert config.reuse_port is False


# --- flags and environment --------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("AGGTRIO_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_environment_fills_in_missing_flags_and_flags_win(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AGGTRIO_PORT", "6000")
    clean_env.setenv("AGGTRIO_SYMBOLS", "btc-usdt")
    clean_env.setenv(
        "AGGTRIO_VENUE_URL", "binance=ws://127.0.0.1:9001 bitstamp=ws://127.0.0.1:9002"
    )
    args = build_parser().parse_args(["serve", "--port", "7000", "--depth", "5"])
    config = serve_config_from_args(args)
    assert config.port == 7000
    assert config.symbols == ("BTCUSDT",)
    assert config.depth == 5
    assert config.base_url("bitstamp") == "ws://127.0.0.1:9002"


def test_max_subscribers_from_flag_environment_or_default(clean_env: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    assert serve_config_from_args(parse(["serve"])).max_subscribers == 1000
    clean_env.setenv("AGGTRIO_MAX_SUBSCRIBERS", "20")
    assert serve_config_from_args(parse(["serve"])).max_subscribers == 20
    assert serve_config_from_args(parse(["serve", "--max-subscribers", "3"])).max_subscribers == 3


def test_resend_interval_from_flag_environment_or_default(clean_env: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    assert serve_config_from_args(parse(["serve"])).resend_interval == 1.0
    clean_env.setenv("AGGTRIO_RESEND_INTERVAL", "0.25")
    assert serve_config_from_args(parse(["serve"])).resend_interval == 0.25
    args = parse(["serve", "--resend-interval", "5"])
    assert serve_config_from_args(args).resend_interval == 5.0


def test_workers_from_flag_environment_or_default(clean_env: pytest.MonkeyPatch) -> None:
    parse = build_parser().parse_args
    assert workers_from_args(parse(["serve"])) == 1
    clean_env.setenv("AGGTRIO_WORKERS", "3")
    assert workers_from_args(parse(["serve"])) == 3
    assert workers_from_args(parse(["serve", "--workers", "2"])) == 2
    clean_env.setenv("AGGTRIO_WORKERS", "lots")
    with pytest.raises(ConfigError, match="AGGTRIO_WORKERS"):
        workers_from_args(parse(["serve"]))


def test_bad_environment_value_names_the_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AGGTRIO_DEPTH", "0")
    with pytest.raises(ConfigError, match="AGGTRIO_DEPTH"):
        serve_config_from_args(build_parser().parse_args(["serve"]))


def test_a_pair_a_venue_cannot_spell_is_refused_at_startup_naming_both() -> None:
    with pytest.raises(ConfigError) as info:
        ServeConfig(symbols=("ETHBTC", "ABCXYZ"), venues=("binance", "okx"))
    assert one_line(info).startswith("okx: cannot tell base from quote in 'ABCXYZ'")
    assert "drop okx from --venues or the pair" in one_line(info)
    # Venues that spell pairs without a separator need no split.
    assert ServeConfig(symbols=("ABCXYZ",), venues=("binance", "bybit")).symbols == ("ABCXYZ",)
