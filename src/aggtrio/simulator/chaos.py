"""Random faults over time, for soak tests and ``aggtrio simulate --chaos SECONDS``.

Every ``interval`` seconds on average (exponentially distributed gaps), one random fault
hits one random venue and is healed a few seconds later. A venue carries at most one chaos
fault at a time, so each heal restores exactly what its injection changed, and faults set
otherwise (e.g. with ``--fault``) survive; a venue stalled by something else is skipped.
Each injection is logged at INFO as one line and recorded in the returned log.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence

import attrs
import trio

from aggtrio.simulator.delta import DeltaVenue
from aggtrio.simulator.faults import answers_heartbeats, ask_to_reconnect, reconnect_notice
from aggtrio.simulator.venue import MALFORMED_KINDS, SimulatedVenue

logger = logging.getLogger(__name__)

CHAOS_FAULTS = (
    "outage",  # refuse new connections and reset the open ones, until healed
    "drop",  # reset the open connections (after a few more messages)
    "close",  # close the open connections cleanly (1001)
    "stall",
    "mute",
    "ignore-heartbeats",  # venues whose clients send heartbeats (not Binance, Coinbase)
    "reject-subscriptions",  # and drop connections, so clients must subscribe again
    "garbage",  # a fraction of data messages malformed, until healed
    "malformed",  # one malformed message of a random kind, "huge" included
    "reconnect",  # the venue's reconnect notice, with the heal time as grace (if it has one)
    "sequence",  # delta venues: a gap, duplicate, reorder or bad checksum in one delta
)


@attrs.define
class Injection:
    """One chaos fault: when (``trio.current_time()``), where, what, and when it ended."""

    at: float
    venue: str
    fault: str  # a CHAOS_FAULTS name, with detail after a colon ("malformed:crossed")
    duration: float  # seconds it was meant to last; 0 for a one-off event
    healed_at: float | None = None


Heal = Callable[[], None]


async def run_chaos(
    venues: Sequence[SimulatedVenue] | Mapping[str, SimulatedVenue],
    rng: random.Random,
    interval: float,
    *,
    heal_after: tuple[float, float] = (2.0, 6.0),
    count: int | None = None,
    task_status: trio.TaskStatus[list[Injection]] = trio.TASK_STATUS_IGNORED,
) -> list[Injection]:
    """Inject random faults into ``venues`` until cancelled, or until ``count`` injections
    have been made and healed; returns the log of injections.

    The same (live) log is reported through ``task_status`` at start, for callers that run
    this in the background. Whatever is still injected when this ends is healed.
    """
    if not interval > 0:
        raise ValueError("the chaos interval must be positive")
    pool = list(venues.values()) if isinstance(venues, Mapping) else list(venues)
    if not pool:
        raise ValueError("chaos needs at least one venue")
    log: list[Injection] = []
    active: dict[SimulatedVenue, Heal] = {}  # venue -> how to heal its current fault
    freed = trio.Event()
    task_status.started(log)

    async def heal_later(venue: SimulatedVenue, injection: Injection, heal: Heal) -> None:
        nonlocal freed
        await trio.sleep(injection.duration)
        if active.pop(venue, None) is not None:
            heal()
        injection.healed_at = trio.current_time()
        logger.debug("chaos: %s %s healed", injection.venue, injection.fault)
        freed.set()
        freed = trio.Event()

    try:
        async with trio.open_nursery() as nursery:
            while count is None or len(log) < count:
                await trio.sleep(rng.expovariate(1.0 / interval))
                # A venue stalled otherwise (--fault stall-after) would hold up a close or a
                # reconnect notice until it unstalls: leave it alone.
                while not (free := [v for v in pool if v not in active and not v.stalled]):
                    with trio.move_on_after(1.0):  # stalled venues do not announce a change
                        await freed.wait()
                venue = rng.choice(free)
                duration = rng.uniform(*heal_after)
                fault, heal, one_off = await _inject(venue, rng, duration)
                injection = Injection(trio.current_time(), venue.name, fault, duration)
                log.append(injection)
                if one_off:
                    injection.duration = 0.0
                    injection.healed_at = injection.at
                    logger.info("chaos: %s %s", venue.name, fault)
                else:
                    active[venue] = heal
                    nursery.start_soon(heal_later, venue, injection, heal)
                    logger.info("chaos: %s %s for %.1fs", venue.name, fault, duration)
    finally:
        for heal in active.values():
            heal()
        active.clear()
    return log


async def _inject(
    venue: SimulatedVenue, rng: random.Random, duration: float
) -> tuple[str, Heal, bool]:
    """Inject one random fault: its name, how to undo it, and whether it is a one-off."""
    able = {
        "ignore-heartbeats": answers_heartbeats(venue),
        "reconnect": reconnect_notice(venue) is not None,
        "sequence": isinstance(venue, DeltaVenue),
    }
    fault = rng.choice([fault for fault in CHAOS_FAULTS if able.get(fault, True)])

    def nothing() -> None:
        pass

    if fault == "outage":
        was = venue.refusing
        venue.refuse()
        venue.drop_connections()
        return fault, lambda: venue.refuse(was), False
    if fault == "drop":
        after = rng.choice((0, rng.randint(1, 20)))
        venue.drop_connections(after_messages=after)
        return f"drop:after={after}", nothing, True
    if fault == "close":
        await venue.close_connections()
        return fault, nothing, True
    if fault == "stall":
        venue.stall()
        return fault, venue.unstall, False
    if fault == "mute":
        was_muted = venue.muted
        venue.mute()
        return fault, nothing if was_muted else venue.unmute, False
    if fault == "ignore-heartbeats":
        was = venue.ignoring_heartbeats
        venue.ignore_heartbeats()
        return fault, lambda: venue.ignore_heartbeats(was), False
    if fault == "reject-subscriptions":
        was = venue.rejecting_subscriptions
        venue.reject_subscriptions()
        venue.drop_connections()
        return fault, lambda: venue.reject_subscriptions(was), False
    if fault == "garbage":
        rate, before = round(rng.uniform(0.05, 0.5), 2), venue.garbage
        venue.garbage_rate(rate)
        return f"garbage={rate:g}", lambda: venue.garbage_rate(before), False
    if fault == "malformed":
        kind = rng.choice(MALFORMED_KINDS)
        await venue.send_malformed(kind)
        return f"malformed:{kind}", nothing, True
    if fault == "sequence":
        assert isinstance(venue, DeltaVenue)
        kind = rng.choice(venue.supported_faults)
        venue.inject(kind)
        return f"sequence:{kind}", nothing, True
    # reconnect: the notice now, the close after the grace; the venue is busy meanwhile.
    await ask_to_reconnect(venue, grace=duration)
    return fault, nothing, False
