"""Pair names: every accepted spelling means one canonical symbol; anything else is refused."""

from __future__ import annotations

import pytest

from aggtrio.symbols import (
    MAX_SYMBOL_LENGTH,
    InvalidSymbolError,
    UnknownPairError,
    normalize_symbol,
    parse_symbol_list,
    split_pair,
    venue_pair,
)


@pytest.mark.parametrize(
    "text",
    [
        "ETHBTC",
        "ethbtc",
        "EthBtc",
        "ETH/BTC",
        "eth/btc",
        "ETH-BTC",
        "eth_btc",
        " ETHBTC ",
        "\tETH-BTC\n",
    ],
)
def test_accepted_spellings_normalize_to_the_canonical_symbol(text: str) -> None:
    assert normalize_symbol(text) == "ETHBTC"


def test_digits_are_kept() -> None:
    assert normalize_symbol("1inch-usdt") == "1INCHUSDT"


def test_length_limit_is_inclusive() -> None:
    text = "A" * MAX_SYMBOL_LENGTH
    assert MAX_SYMBOL_LENGTH == 32
    assert normalize_symbol(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "A" * 33,
        "ETH BTC",
        "ETH.BTC",
        "ETH/BTC/X",
        "ETH//BTC",
        "ETH-",
        "/BTC",
        "ETH:BTC",
        "€",
        "ETH€",
        "ÉTHBTC",
        "E",
        "e",
        "ETH/" + "B" * 29,  # 33 characters, separator included
        "ETH*BTC",
        "ETH+BTC",
        "ETH\\BTC",
        "ETH%2FBTC",
        "ETH;BTC",
        "ETH\x00BTC",
        "ETH\u200bBTC",  # zero-width space
        "\uff25\uff34\uff28\uff22\uff34\uff23",  # ETHBTC in fullwidth letters
        "ETH\u0661BTC",  # an Arabic-Indic digit: a digit, but not 0-9
    ],
)
def test_invalid_symbols_are_rejected(text: str) -> None:
    with pytest.raises(InvalidSymbolError):
        normalize_symbol(text)


def test_a_symbol_of_32_characters_with_a_separator_is_accepted() -> None:
    assert normalize_symbol("ETH/" + "B" * 28) == "ETH" + "B" * 28


def test_a_huge_symbol_is_not_echoed_back_in_full() -> None:
    with pytest.raises(InvalidSymbolError, match="longer than 32 characters") as info:
        normalize_symbol("A" * 100_000)
    assert len(str(info.value)) < 100


def test_invalid_symbol_error_is_a_value_error_with_a_one_line_reason() -> None:
    with pytest.raises(ValueError, match="ETH BTC") as info:
        normalize_symbol("ETH BTC")
    assert "\n" not in str(info.value)


def test_symbol_list_keeps_order_and_drops_repeats() -> None:
    assert parse_symbol_list("btc-usdt,ETHBTC,eth/btc,BTCUSDT, ethbtc ,ltc_btc") == (
        "BTCUSDT",
        "ETHBTC",
        "LTCBTC",
    )


def test_symbol_list_of_one() -> None:
    assert parse_symbol_list("eth/btc") == ("ETHBTC",)


@pytest.mark.parametrize("text", ["", "ETHBTC,", "ETHBTC,,BTCUSDT", "ETHBTC,ETH BTC"])
def test_symbol_list_with_a_bad_entry_is_rejected(text: str) -> None:
    with pytest.raises(InvalidSymbolError):
        parse_symbol_list(text)


@pytest.mark.parametrize(
    ("symbol", "base", "quote"),
    [
        ("ETHBTC", "ETH", "BTC"),
        ("BTCUSDT", "BTC", "USDT"),  # the longest quote that fits, not BTCUSD/T
        ("BTCUSD", "BTC", "USD"),
        ("eth-usdc", "ETH", "USDC"),
        ("SOLEUR", "SOL", "EUR"),
    ],
)
def test_split_pair_finds_base_and_quote(symbol: str, base: str, quote: str) -> None:
    assert split_pair(symbol) == (base, quote)


@pytest.mark.parametrize("symbol", ["ABCXYZ", "BTC"])
def test_split_pair_refuses_a_pair_with_no_known_quote(symbol: str) -> None:
    with pytest.raises(UnknownPairError, match="cannot tell base from quote"):
        split_pair(symbol)


@pytest.mark.parametrize(
    ("venue", "spelling"),
    [
        ("binance", "ethbtc"),
        ("bitstamp", "ethbtc"),
        ("kraken", "ETH/BTC"),
        ("coinbase", "ETH-BTC"),
        ("okx", "ETH-BTC"),
        ("bybit", "ETHBTC"),
    ],
)
def test_venue_pair_spells_the_pair_as_each_venue_does(venue: str, spelling: str) -> None:
    assert venue_pair(venue, "eth/btc") == spelling


def test_venue_pair_names_the_venue_when_it_cannot_spell_the_pair() -> None:
    with pytest.raises(UnknownPairError, match=r"^kraken: cannot tell base from quote in 'ABCXYZ'"):
        venue_pair("kraken", "ABCXYZ")
    assert venue_pair("bybit", "ABCXYZ") == "ABCXYZ"  # no split needed


def test_venue_pair_refuses_an_unknown_venue() -> None:
    with pytest.raises(ValueError, match="no pair spelling known for venue 'ftx'"):
        venue_pair("ftx", "ETHBTC")
