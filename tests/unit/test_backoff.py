"""Reconnect backoff (capped exponential, equal jitter) and the rate-limited malformed log."""

from __future__ import annotations

import itertools
import random
import types

import pytest

import aggtrio.feed
from aggtrio.feed import Backoff, _RateLimitedLog

SEEDS = range(50)


def ceiling(backoff: Backoff, failures: int) -> float:
    """The documented bound: initial * 2**(failures-2), capped at maximum."""
    return min(backoff.maximum, backoff.initial * 2.0 ** (failures - 2))


@pytest.mark.parametrize("backoff", [Backoff(), Backoff(initial=1.0, maximum=5.0)])
def test_first_retry_is_immediate(backoff: Backoff) -> None:
    # A healthy connection that drops (venues do this routinely) is reopened at once.
    for seed in SEEDS:
        assert backoff.delay(1, random.Random(seed)) == 0.0


def test_second_retry_waits() -> None:
    backoff = Backoff()
    for seed in SEEDS:
        assert backoff.delay(2, random.Random(seed)) > 0.0


@pytest.mark.parametrize(
    "backoff", [Backoff(), Backoff(initial=1.0, maximum=5.0), Backoff(initial=0.1, maximum=0.1)]
)
def test_delay_stays_between_half_the_ceiling_and_the_ceiling(backoff: Backoff) -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        for failures in range(2, 60):
            bound = ceiling(backoff, failures)
            delay = backoff.delay(failures, rng)
            assert bound / 2 <= delay <= bound
            assert delay <= backoff.maximum


def test_delay_reaches_the_maximum_and_stays_there() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0)
    for seed in SEEDS:
        rng = random.Random(seed)
        late = [backoff.delay(failures, rng) for failures in range(20, 200)]
        # Never above the cap, never a tight loop below half of it.
        assert all(15.0 <= d <= 30.0 for d in late)


def test_delay_grows_roughly_exponentially() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0)
    for seed in SEEDS:
        rng = random.Random(seed)
        delays = [backoff.delay(failures, rng) for failures in range(2, 9)]
        # Equal jitter keeps the sequence non-decreasing: the floor of each step is the
        # ceiling of the one before.
        assert delays == sorted(delays)
        # ...and it really grows: eight failures in, the wait is far longer than the first one.
        assert delays[-1] >= 8 * delays[0]
    # On average, each step doubles (until the cap).
    means = [
        sum(backoff.delay(failures, random.Random(seed)) for seed in range(200)) / 200
        for failures in range(2, 8)
    ]
    for before, after in itertools.pairwise(means):
        assert 1.6 < after / before < 2.4


def test_delay_is_deterministic_for_a_seeded_random() -> None:
    backoff = Backoff()

    def sequence(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [backoff.delay(failures, rng) for failures in range(1, 20)]

    assert sequence(1234) == sequence(1234)
    # ...and jittered: two feeds failing together do not retry in lock-step.
    assert sequence(1234) != sequence(4321)


def test_delay_is_capped_after_very_many_failures() -> None:
    backoff = Backoff()
    rng = random.Random(0)
    for failures in (1025, 1100, 10_000):
        assert 15.0 <= backoff.delay(failures, rng) <= 30.0


# --- rate-limited log -------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(aggtrio.feed, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_rate_limited_log_emits_first_then_one_per_interval_with_a_count(clock: FakeClock) -> None:
    lines: list[str] = []
    limited = _RateLimitedLog(interval=10.0)

    limited(lines.append, "bad message 1")
    assert lines == ["bad message 1"]

    for i in range(2, 6):
        clock.now += 1.0
        limited(lines.append, f"bad message {i}")
    assert lines == ["bad message 1"]

    clock.now += 10.0
    limited(lines.append, "bad message 6")
    assert lines == ["bad message 1", "bad message 6 (+4 similar suppressed)"]

    # The count starts again after each emitted line; a quiet period gives a plain line.
    clock.now += 60.0
    limited(lines.append, "bad message 7")
    assert lines[-1] == "bad message 7"
