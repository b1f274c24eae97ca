"""The feed loop against real WebSocket servers: liveness, orderly reconnects, backoff."""

from __future__ import annotations

import functools

import trio
import trio_websocket

from aggtrio.feed import Backoff, FeedState
from aggtrio.model import BookEvent, VenueBook, VenueDown
from aggtrio.simulator import BinanceSimulator, BitstampSimulator, Market
from aggtrio.venues.binance import BinanceAdapter
from aggtrio.venues.bitstamp import BitstampAdapter

from .feeds import FastHeartbeat, next_event, start_feed, wait_until


async def test_a_silent_venue_is_declared_stale_and_replaced(nursery: trio.Nursery) -> None:
    connections = 0

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        nonlocal connections
        connections += 1
        ws = await request.accept()
        if connections == 1:  # the first connection sends one book, then falls silent
            await ws.send_message(
                '{"stream":"ethbtc@depth20@100ms","data":{"lastUpdateId":1,'
                '"bids":[["1.0","1.0"]],"asks":[["2.0","1.0"]]}}'
            )
        await trio.sleep_forever()

    server = await nursery.start(
        functools.partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
    )
    feed, receive = start_feed(
        nursery,
        BinanceAdapter(["ETHBTC"], 10),
        f"ws://127.0.0.1:{server.port}",
        liveness_timeout=0.5,
    )
    with trio.fail_after(5):
        book = await next_event(receive, VenueBook)
        silent_since = trio.current_time()
        down = await next_event(receive, VenueDown)
    assert isinstance(book, VenueBook)
    assert isinstance(down, VenueDown)
    assert down.symbols == ("ETHBTC",)
    assert "stale" in down.reason
    assert 0.5 <= trio.current_time() - silent_since < 1.5
    with trio.fail_after(5):
        while connections < 2:  # noqa: ASYNC110 - polling a counter the server task owns
            await trio.sleep(0.01)
    assert feed.stats.reconnects >= 1


async def test_a_quiet_bitstamp_book_is_not_stale_while_heartbeats_are_answered(
    nursery: trio.Nursery,
) -> None:
    venue = BitstampSimulator(Market(seed=3), seed=3)
    await nursery.start(venue.serve)
    venue.freeze()  # no book changes: Bitstamp sends nothing but heartbeat replies
    feed, receive = start_feed(
        nursery, FastHeartbeat(["ETHBTC"], 10), venue.url, liveness_timeout=0.6
    )
    with trio.fail_after(5):
        await next_event(receive, VenueBook)
    await trio.sleep(2.0)  # more than three liveness timeouts of book silence
    assert feed.stats.state is FeedState.LIVE
    assert feed.stats.reconnects == 0
    assert venue.connections_total == 1


async def events_for(
    receive: trio.MemoryReceiveChannel[BookEvent], seconds: float
) -> list[BookEvent]:
    """Everything the feed sends within `seconds`."""
    seen: list[BookEvent] = []
    with trio.move_on_after(seconds):
        async for event in receive:
            seen.append(event)
    return seen


async def test_binance_server_shutdown_hands_over_without_a_gap(nursery: trio.Nursery) -> None:
    venue = BinanceSimulator(Market(seed=4), seed=4, shutdown_grace=5.0)
    await nursery.start(venue.serve)
    slow = Backoff(initial=10.0, maximum=10.0)  # any backoff would show as a 10 s wait
    feed, receive = start_feed(
        nursery, BinanceAdapter(["ETHBTC", "BTCUSDT"], 10), venue.url, backoff=slow
    )
    with trio.fail_after(5):
        await next_event(receive, VenueBook)
    await venue.request_shutdown()
    # Well before the venue's 5 s grace would close it, the old connection is gone and
    # the new one carries both symbols; the venue never left the book.
    events = await events_for(receive, 2.0)
    assert venue.connections_total == 2
    assert venue.connections == 1
    assert not [e for e in events if isinstance(e, VenueDown)]
    assert {e.symbol for e in events[-20:] if isinstance(e, VenueBook)} == {"ETHBTC", "BTCUSDT"}
    assert feed.stats.handovers == 1
    assert feed.stats.state is FeedState.LIVE


async def test_bitstamp_request_reconnect_resubscribes_before_dropping_the_old_connection(
    nursery: trio.Nursery,
) -> None:
    venue = BitstampSimulator(Market(seed=5), seed=5, reconnect_grace=5.0)
    await nursery.start(venue.serve)
    feed, receive = start_feed(
        nursery,
        BitstampAdapter(["ETHBTC", "BTCUSDT"], 10),
        venue.url,
        backoff=Backoff(initial=10.0, maximum=10.0),
    )
    seen: set[str] = set()
    with trio.fail_after(5):
        while seen != {"ETHBTC", "BTCUSDT"}:
            event = await next_event(receive, VenueBook)
            seen.add(event.symbol)  # type: ignore[union-attr]
    subscribed_before = venue.subscribe_requests
    await venue.request_reconnect()
    events = await events_for(receive, 2.0)
    assert venue.connections_total == 2
    assert venue.connections == 1
    assert venue.subscribe_requests == subscribed_before + 2
    assert not [e for e in events if isinstance(e, VenueDown)]
    assert feed.stats.handovers == 1


async def test_a_handover_whose_new_connection_fails_keeps_the_old_one_until_its_timeout(
    nursery: trio.Nursery,
) -> None:
    venue = BinanceSimulator(Market(seed=12), seed=12, shutdown_grace=5.0)
    await nursery.start(venue.serve)
    _feed, receive = start_feed(
        nursery, BinanceAdapter(["ETHBTC"], 10), venue.url, handover_timeout=1.0
    )
    with trio.fail_after(5):
        await next_event(receive, VenueBook)
    venue.refuse()  # the successor cannot connect
    asked_at = trio.current_time()
    await venue.request_shutdown()
    with trio.fail_after(3):
        down = await next_event(receive, VenueDown)
    # The old connection served on for the handover timeout, then gave up on its successor.
    assert 0.9 <= trio.current_time() - asked_at < 2.0
    assert isinstance(down, VenueDown)
    assert "not live in time" in down.reason
    assert venue.connections_refused >= 1
    venue.refuse(False)
    with trio.fail_after(5):
        await next_event(receive, VenueBook)


async def test_a_connection_near_its_age_limit_is_replaced_without_a_gap(
    nursery: trio.Nursery,
) -> None:
    venue = BinanceSimulator(Market(seed=7), seed=7)
    await nursery.start(venue.serve)
    feed, receive = start_feed(nursery, BinanceAdapter(["ETHBTC"], 10), venue.url, rotate_after=1.0)
    events = await events_for(receive, 2.6)  # rotations at about 1 s and 2 s
    assert not [e for e in events if isinstance(e, VenueDown)]
    assert venue.connections_total == 3
    assert feed.stats.handovers == 2
    with trio.fail_after(1):
        await wait_until(lambda: venue.connections == 1)


async def test_a_refusing_venue_is_retried_with_growing_delays(nursery: trio.Nursery) -> None:
    venue = BinanceSimulator(Market(seed=6), seed=6)
    await nursery.start(venue.serve)
    await venue.kill()  # the port refuses connections
    feed, _receive = start_feed(
        nursery,
        BinanceAdapter(["ETHBTC"], 10),
        venue.url,
        backoff=Backoff(initial=0.2, maximum=0.8),
    )
    await trio.sleep(3.0)
    # Delays are 0, 0.1-0.2, 0.2-0.4, then 0.4-0.8 each (equal jitter): in 3 s that is at
    # least 5 attempts (longest delays: 0+0.2+0.4+0.8+0.8 = 2.2 s) and at most 9 (shortest:
    # 0+0.1+0.2+6*0.4 = 2.7 s). A tight loop would make hundreds.
    assert 4 <= feed.stats.reconnects <= 9
    assert feed.stats.state is FeedState.BACKING_OFF
