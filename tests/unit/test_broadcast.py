"""Latest-value broadcast: conflation for slow subscribers, no effect on fast ones."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from aggtrio.broadcast import Broadcast, BroadcastClosedError


async def test_slow_subscriber_skips_to_the_newest_value() -> None:
    broadcast = Broadcast[int]()
    for value in range(1, 6):
        broadcast.publish(value)
    version, value = await broadcast.next_after(0)
    # Four intermediate values were skipped: the subscriber sees only the newest.
    assert (version, value) == (5, 5)


async def test_subscriber_waits_for_a_value_newer_than_seen() -> None:
    broadcast = Broadcast[str]()
    broadcast.publish("a")
    received: list[str] = []

    async def subscriber() -> None:
        seen = 1
        for _ in range(2):
            seen, value = await broadcast.next_after(seen)
            received.append(value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber)
        await trio.testing.wait_all_tasks_blocked()
        assert received == []  # "a" was already seen
        broadcast.publish("b")
        await trio.testing.wait_all_tasks_blocked()
        broadcast.publish("c")
    assert received == ["b", "c"]


async def test_a_stalled_subscriber_does_not_delay_another() -> None:
    broadcast = Broadcast[int]()
    fast: list[int] = []
    stalled_gate = trio.Event()

    async def fast_subscriber() -> None:
        seen = 0
        while len(fast) < 100:
            seen, value = await broadcast.next_after(seen)
            fast.append(value)

    async def stalled_subscriber() -> None:
        await broadcast.next_after(0)
        await stalled_gate.wait()  # never reads again until released

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fast_subscriber)
        nursery.start_soon(stalled_subscriber)
        for value in range(1, 101):
            await trio.testing.wait_all_tasks_blocked()
            broadcast.publish(value)
        await trio.testing.wait_all_tasks_blocked()
        stalled_gate.set()
    assert fast == list(range(1, 101))


async def test_close_wakes_subscribers_and_counts_them_out() -> None:
    broadcast = Broadcast[int]()
    errors: list[Exception] = []

    async def subscriber() -> None:
        with broadcast.subscription():
            try:
                await broadcast.next_after(0)
            except BroadcastClosedError as exc:
                errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(subscriber)
        await trio.testing.wait_all_tasks_blocked()
        assert broadcast.subscribers == 3
        broadcast.close()
        with trio.fail_after(1):
            await broadcast.wait_idle()
    assert len(errors) == 3
    assert broadcast.subscribers == 0
    # Feeds still running during shutdown may publish: that must not crash the aggregator.
    broadcast.publish(1)
    with pytest.raises(BroadcastClosedError):
        await broadcast.next_after(0)


async def test_a_quiet_broadcast_republishes_its_latest_value_until_closed(
    autojump_clock: trio.abc.Clock,
) -> None:
    broadcast = Broadcast[str]()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broadcast.resend_when_quiet, 1.0)
        await trio.sleep(5.0)
        assert broadcast.version == 0  # nothing to resend before the first value
        broadcast.publish("a")
        await trio.sleep(0.5)
        broadcast.publish("b")  # restarts the interval
        await trio.sleep(2.75)  # resends at +1.0 and +2.0 after "b"
        assert (broadcast.version, broadcast.latest) == (4, "b")
        broadcast.close()  # ends the loop: the nursery can exit
