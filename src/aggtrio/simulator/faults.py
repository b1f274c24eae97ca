"""Faults named on the command line: ``aggtrio simulate --fault VENUE:KIND[=VALUE]``.

A small set that covers every fault the simulators can inject, either as a standing
condition or over time: switches that hold for the whole run, one-off changes after a
delay, and events that repeat. :func:`parse_fault` validates one spec (``ValueError`` with
a one-line reason), :func:`run_faults` applies a list of them to running venues.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

import attrs
import trio

from aggtrio.simulator.binance import BinanceSimulator
from aggtrio.simulator.bitstamp import BitstampSimulator
from aggtrio.simulator.bybit import BybitSimulator
from aggtrio.simulator.delta import DeltaVenue
from aggtrio.simulator.kraken import KrakenSimulator
from aggtrio.simulator.okx import OkxSimulator
from aggtrio.simulator.venue import MALFORMED_KINDS, SimulatedVenue

logger = logging.getLogger(__name__)


@attrs.frozen(slots=True)
class FaultKind:
    """What a KIND does and what VALUE it takes: ``None`` (no value), ``"seconds"`` or
    ``"fraction"``."""

    value: str | None
    help: str


FAULT_KINDS: dict[str, FaultKind] = {
    # Switches: on for the whole run.
    "mute": FaultKind(None, "no data messages; pings, heartbeats and acks still answered"),
    "ignore-heartbeats": FaultKind(
        None, "leave application heartbeats unanswered (Bitstamp, Kraken, OKX, Bybit)"
    ),
    "reject-subscriptions": FaultKind(None, "answer every subscription with the venue's error"),
    "garbage": FaultKind("fraction", "replace a fraction F (0..1) of data messages with junk"),
    "max-connection-age": FaultKind("seconds", "close each connection S seconds after it opened"),
    # For a while, or after a while.
    "refuse-for": FaultKind("seconds", "reset new connections for the first S seconds"),
    "stall-after": FaultKind("seconds", "stall for good after S seconds (0: at once)"),
    # Every so often.
    "drop-every": FaultKind("seconds", "every S seconds, reset all connections (no close frame)"),
    "close-every": FaultKind("seconds", "every S seconds, close all connections cleanly (1001)"),
    "reconnect-every": FaultKind(
        "seconds", "every S seconds, the venue's reconnect notice (not coinbase, bybit)"
    ),
    "resync-every": FaultKind(
        "seconds",
        "every S seconds, break a delta venue's sequence: gap, duplicate, reorder, bad "
        "checksum in turn (kraken, coinbase, okx, bybit)",
    ),
    "malformed-every": FaultKind("seconds", "every S seconds, one malformed message, random kind"),
}


def _venues_with_notice() -> list[str]:
    from aggtrio.simulator.runner import SIMULATORS

    return [n for n, cls in SIMULATORS.items() if reconnect_notice_class(cls)]


def _delta_venues() -> list[str]:
    from aggtrio.simulator.runner import SIMULATORS

    return [
        n for n, cls in SIMULATORS.items() if isinstance(cls, type) and issubclass(cls, DeltaVenue)
    ]


# Faults only some venues can show, and which those are.
_VENUES_ABLE: dict[str, Callable[[], list[str]]] = {
    "reconnect-every": _venues_with_notice,
    "resync-every": _delta_venues,
}


def fault_help() -> str:
    """The list of kinds, for ``--help``."""
    lines = ["faults (--fault VENUE:KIND[=VALUE], repeatable):"]
    for name, kind in FAULT_KINDS.items():
        spec = f"{name}={'S' if kind.value == 'seconds' else 'F'}" if kind.value else name
        lines.append(f"  {spec:<24} {kind.help}")
    lines.append("  e.g. binance:garbage=0.05 bitstamp:ignore-heartbeats binance:drop-every=20")
    return "\n".join(lines)


@attrs.frozen(slots=True)
class FaultSpec:
    """One parsed ``VENUE:KIND[=VALUE]``."""

    venue: str
    kind: str
    value: float | None = None

    def __str__(self) -> str:
        value = "" if self.value is None else f"={self.value:g}"
        return f"{self.venue}:{self.kind}{value}"


def parse_fault(text: str, venues: Collection[str]) -> FaultSpec:
    """Parse ``VENUE:KIND[=VALUE]`` for one of ``venues``; ValueError says what is wrong."""
    venue, colon, rest = text.partition(":")
    venue = venue.strip().lower()
    if not colon or not venue or not rest:
        raise ValueError(f"expected VENUE:KIND[=VALUE], not {text!r}")
    if venue not in venues:
        raise ValueError(
            f"{text!r}: venue {venue!r} is not simulated (simulated: {', '.join(venues)})"
        )
    name, equals, value_text = rest.partition("=")
    name = name.strip().lower()
    kind = FAULT_KINDS.get(name)
    if kind is None:
        raise ValueError(f"{text!r}: unknown fault {name!r} (known: {', '.join(FAULT_KINDS)})")
    able = _VENUES_ABLE.get(name)
    if able is not None and venue not in able():
        raise ValueError(
            f"{text!r}: {venue} cannot do {name} (venues that can: {', '.join(able())})"
        )
    if kind.value is None:
        if equals:
            raise ValueError(f"{text!r}: {name} takes no value")
        return FaultSpec(venue, name)
    if not equals:
        placeholder = "SECONDS" if kind.value == "seconds" else "FRACTION"
        raise ValueError(f"{text!r}: {name} needs a value ({name}={placeholder})")
    try:
        value = float(value_text)
    except ValueError:
        value = math.nan
    if kind.value == "fraction" and not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r}: {name} must be a fraction from 0 to 1, not {value_text!r}")
    if kind.value == "seconds":
        # stall-after=0 means at once; every other duration must be positive.
        usable = value > 0 or (name == "stall-after" and value == 0)
        if not (usable and value < 86400):
            raise ValueError(f"{text!r}: {name} must be a number of seconds, not {value_text!r}")
    return FaultSpec(venue, name, value)


Notice = Callable[[float | None], Awaitable[None]]
_NOTICE_CLASSES = (BinanceSimulator, BitstampSimulator, KrakenSimulator, OkxSimulator)


# Venues whose clients send application heartbeats (Binance and Coinbase clients send none).
_HEARTBEAT_CLASSES = (BitstampSimulator, KrakenSimulator, OkxSimulator, BybitSimulator)


def answers_heartbeats(venue: SimulatedVenue) -> bool:
    """Whether `venue` answers application heartbeats, so ignoring them is a fault."""
    return isinstance(venue, _HEARTBEAT_CLASSES)


def reconnect_notice_class(cls: object) -> bool:
    """Whether simulators of class `cls` have a reconnect notice."""
    return isinstance(cls, type) and issubclass(cls, _NOTICE_CLASSES)


def reconnect_notice(venue: SimulatedVenue) -> Notice | None:
    """How `venue` announces an orderly reconnect, if its protocol can (``serverShutdown``,
    ``bts:request_reconnect``, Kraken's maintenance status, OKX's 64008 notice); it closes
    its connections after the grace. None for venues that just close (Coinbase, Bybit)."""
    if isinstance(venue, BinanceSimulator):
        return venue.request_shutdown
    if isinstance(venue, BitstampSimulator):
        return venue.request_reconnect
    if isinstance(venue, KrakenSimulator):
        return venue.announce_maintenance
    if isinstance(venue, OkxSimulator):
        return venue.send_notice
    return None


async def ask_to_reconnect(venue: SimulatedVenue, grace: float | None = None) -> None:
    """Send the venue's reconnect notice (see :func:`reconnect_notice`)."""
    notice = reconnect_notice(venue)
    if notice is None:
        raise TypeError(f"{venue.name} has no reconnect notice")
    await notice(grace)


async def break_sequence(venue: SimulatedVenue) -> None:
    """Spoil the next delta of every subscription of a snapshot-then-delta venue with the
    next continuity fault it supports, in turn (gap, duplicate, reorder, bad checksum)."""
    if not isinstance(venue, DeltaVenue):
        raise TypeError(f"{venue.name} sends whole books: it has no sequence to break")
    venue.inject_next()


async def run_faults(
    venues: Mapping[str, SimulatedVenue],
    faults: Sequence[FaultSpec],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply ``faults`` (switches at once, timed ones in the background); reports started
    once the switches are on, then runs until cancelled."""
    async with trio.open_nursery() as nursery:
        for fault in faults:
            venue = venues[fault.venue]
            logger.info("fault: %s", fault)
            timed = _apply(venue, fault)
            if timed is not None:
                nursery.start_soon(timed)
        task_status.started()
        await trio.sleep_forever()


def _apply(venue: SimulatedVenue, fault: FaultSpec) -> Callable[[], Awaitable[None]] | None:
    """Switch ``fault`` on now, or return the task that plays it out over time."""
    kind, value = fault.kind, fault.value
    if kind == "mute":
        venue.mute()
    elif kind == "ignore-heartbeats":
        venue.ignore_heartbeats()
    elif kind == "reject-subscriptions":
        venue.reject_subscriptions()
    elif kind == "garbage":
        assert value is not None
        venue.garbage_rate(value)
    elif kind == "max-connection-age":
        venue.max_connection_age = value
    elif kind == "refuse-for":
        assert value is not None
        venue.refuse()
        return lambda: _later(value, fault, venue.refuse, False)
    elif kind == "stall-after":
        assert value is not None
        return lambda: _later(value, fault, venue.stall)
    else:
        assert value is not None
        action = _REPEATED[kind]
        return lambda: _every(value, fault, lambda: action(venue))
    return None


async def _later(
    delay: float, fault: FaultSpec, action: Callable[..., None], *args: object
) -> None:
    await trio.sleep(delay)
    logger.info("fault: %s: %s now", fault, "over" if fault.kind == "refuse-for" else "on")
    action(*args)


async def _every(interval: float, fault: FaultSpec, action: Callable[[], Awaitable[None]]) -> None:
    while True:
        await trio.sleep(interval)
        logger.info("fault: %s", fault)
        await action()


async def _drop(venue: SimulatedVenue) -> None:
    venue.drop_connections()


async def _malformed(venue: SimulatedVenue) -> None:
    await venue.send_malformed(venue.fault_rng.choice(MALFORMED_KINDS))


_REPEATED: dict[str, Callable[[SimulatedVenue], Awaitable[None]]] = {
    "drop-every": _drop,
    "close-every": lambda venue: venue.close_connections(),
    "reconnect-every": ask_to_reconnect,
    "resync-every": break_sequence,
    "malformed-every": _malformed,
}
