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
