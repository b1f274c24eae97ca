"""The ``--fault VENUE:KIND[=VALUE]`` grammar: what it accepts, and why it refuses the rest."""

from __future__ import annotations

import re

import pytest

from aggtrio.simulator.faults import FAULT_KINDS, FaultSpec, fault_help, parse_fault

VENUES = ("binance", "bitstamp")


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("binance:garbage=0.05", FaultSpec("binance", "garbage", 0.05)),
        ("bitstamp:ignore-heartbeats", FaultSpec("bitstamp", "ignore-heartbeats")),
        ("Bitstamp:Reject-Subscriptions", FaultSpec("bitstamp", "reject-subscriptions")),
        ("binance:max-connection-age=60", FaultSpec("binance", "max-connection-age", 60.0)),
        ("bitstamp:stall-after=30", FaultSpec("bitstamp", "stall-after", 30.0)),
        ("bitstamp:stall-after=0", FaultSpec("bitstamp", "stall-after", 0.0)),
        ("binance:drop-every=20", FaultSpec("binance", "drop-every", 20.0)),
        ("binance:refuse-for=10", FaultSpec("binance", "refuse-for", 10.0)),
        ("binance:garbage=1", FaultSpec("binance", "garbage", 1.0)),
        ("binance:garbage=0", FaultSpec("binance", "garbage", 0.0)),
        ("bitstamp:mute", FaultSpec("bitstamp", "mute")),
    ],
)
def test_accepted(text: str, spec: FaultSpec) -> None:
    assert parse_fault(text, VENUES) == spec


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("binance", "expected VENUE:KIND"),
        ("binance:", "expected VENUE:KIND"),
        (":mute", "expected VENUE:KIND"),
        ("kraken:mute", "'kraken' is not simulated (simulated: binance, bitstamp)"),
        ("binance:explode", "unknown fault 'explode' (known: mute,"),
        ("binance:mute=1", "mute takes no value"),
        ("binance:garbage", "garbage needs a value"),
        ("binance:garbage=", "fraction from 0 to 1, not ''"),
        ("binance:garbage=1.5", "fraction from 0 to 1, not '1.5'"),
        ("binance:garbage=nan", "fraction from 0 to 1"),
        ("binance:drop-every=0", "drop-every must be a number of seconds, not '0'"),
        ("binance:drop-every=-5", "not '-5'"),
        ("binance:drop-every=soon", "not 'soon'"),
        ("binance:refuse-for=inf", "not 'inf'"),
        ("binance:stall-after=-1", "stall-after must be a number of seconds"),
    ],
)
def test_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as excinfo:
        parse_fault(text, VENUES)
    message = str(excinfo.value)
    assert "\n" not in message
    assert repr(text) in message, "the message quotes the spec it refuses"


def test_only_venues_being_simulated() -> None:
    with pytest.raises(ValueError, match="not simulated"):
        parse_fault("bitstamp:mute", ("binance",))


def test_help_lists_every_kind() -> None:
    text = fault_help()
    for name in FAULT_KINDS:
        assert name in text
    assert "garbage=F" in text
    assert "drop-every=S " in text


def test_spec_text_round_trips() -> None:
    for text in ("binance:garbage=0.05", "bitstamp:mute", "binance:drop-every=20"):
        assert str(parse_fault(text, VENUES)) == text


ALL_VENUES = ("binance", "bitstamp", "kraken", "coinbase", "okx", "bybit")


@pytest.mark.parametrize("venue", ["binance", "bitstamp", "kraken", "okx"])
def test_reconnect_notices_only_where_the_protocol_has_one(venue: str) -> None:
    assert parse_fault(f"{venue}:reconnect-every=5", ALL_VENUES).kind == "reconnect-every"


@pytest.mark.parametrize("venue", ["coinbase", "bybit"])
def test_a_venue_without_a_reconnect_notice_is_refused_naming_those_with_one(venue: str) -> None:
    with pytest.raises(ValueError, match="cannot do reconnect-every") as info:
        parse_fault(f"{venue}:reconnect-every=5", ALL_VENUES)
    assert str(info.value) == (
        f"'{venue}:reconnect-every=5': {venue} cannot do reconnect-every "
        "(venues that can: binance, bitstamp, kraken, okx)"
    )


@pytest.mark.parametrize("venue", ["kraken", "coinbase", "okx", "bybit"])
def test_sequence_breaks_only_on_delta_venues(venue: str) -> None:
    assert parse_fault(f"{venue}:resync-every=2", ALL_VENUES).value == 2.0


@pytest.mark.parametrize("venue", ["binance", "bitstamp"])
def test_whole_book_venues_have_no_sequence_to_break(venue: str) -> None:
    with pytest.raises(ValueError, match=f"{venue} cannot do resync-every"):
        parse_fault(f"{venue}:resync-every=2", ALL_VENUES)
