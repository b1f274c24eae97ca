"""OKX over real WebSockets: the simulator's protocol as a plain client sees it, and the Feed
with the OKX adapter against the simulator (books equal to what the venue sent, resyncs on
every continuity fault, reconnects on notices and drops, malformed messages survived)."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.app import RunningService, run_service
from aggtrio.config import ServeConfig
from aggtrio.feed import Backoff, Feed, FeedState
from aggtrio.model import BookEvent, VenueBook, VenueDown
from aggtrio.simulator import BinanceSimulator, Market, SimulatedVenue
from aggtrio.simulator.faults import ask_to_reconnect
from aggtrio.simulator.okx import OkxSimulator
from aggtrio.simulator.venue import MALFORMED_KINDS
from aggtrio.venues.okx import OkxAdapter

from .feeds import start_feed, wait_until
from .harness import first_summary, levels, naive_merge

SYMBOLS = ("ETHBTC", "BTCUSDT")
TIMEOUT = 5.0


class FastPing(OkxAdapter):
    """OKX with a ping every 0.1 s, for a simulator whose idle limit is well under a second."""

    heartbeat_interval = 0.1


@pytest.fixture
async def okx(nursery: trio.Nursery) -> OkxSimulator:
    venue = OkxSimulator(Market(seed=21), seed=21, updates_per_second=40.0, notice_grace=5.0)
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


# --- the simulator, seen by a plain client ----------------------------------------------------


async def send(ws: WebSocketConnection, message: dict[str, Any]) -> None:
    await ws.send_message(orjson.dumps(message).decode())


async def recv(ws: WebSocketConnection) -> Any:
    with trio.fail_after(TIMEOUT):
        message = await ws.get_message()
    return message if message == "pong" else orjson.loads(message)


def books_url(venue: OkxSimulator) -> str:
    return f"{venue.url}/ws/v5/public"


ETH_BTC = {"channel": "books", "instId": "ETH-BTC"}


async def test_subscribe_acks_then_sends_a_400_level_snapshot_then_chained_updates(
    okx: OkxSimulator,
) -> None:
    async with open_websocket_url(books_url(okx)) as ws:
        await send(ws, {"id": "1512", "op": "subscribe", "args": [ETH_BTC]})
        ack = await recv(ws)
        assert ack["id"] == "1512"
        assert ack["event"] == "subscribe"
        assert ack["arg"] == ETH_BTC
        assert isinstance(ack["connId"], str)
        snapshot = await recv(ws)
        assert snapshot["arg"] == ETH_BTC
        assert snapshot["action"] == "snapshot"
        [body] = snapshot["data"]
        assert set(body) == {"asks", "bids", "ts", "checksum", "prevSeqId", "seqId"}
        assert body["prevSeqId"] == -1
        assert body["checksum"] == 0
        assert len(body["bids"]) == len(body["asks"]) == 400
        for level in body["bids"] + body["asks"]:
            assert len(level) == 4
            assert all(isinstance(text, str) for text in level)
            assert level[2] == "0"
            assert not level[0].endswith("0"), "OKX trims trailing zeros"
        seq = body["seqId"]
        for _ in range(3):
            update = await recv(ws)
            assert update["action"] == "update"
            [change] = update["data"]
            assert change["prevSeqId"] == seq
            assert change["seqId"] > seq
            assert change["bids"] or change["asks"]
            seq = change["seqId"]


async def test_updates_come_on_a_100ms_beat(okx: OkxSimulator) -> None:
    okx.updates_per_second = 200.0  # far more changes than pushes: they are batched
    async with open_websocket_url(books_url(okx)) as ws:
        await send(ws, {"op": "subscribe", "args": [ETH_BTC]})
        await recv(ws)
        await recv(ws)
        await recv(ws)
        started = trio.current_time()
        for _ in range(5):
            await recv(ws)
        assert trio.current_time() - started >= 5 * okx.push_interval * 0.9


async def test_a_quiet_book_gets_keepalive_updates(nursery: trio.Nursery) -> None:
    venue = OkxSimulator(Market(seed=22), seed=22, keepalive_interval=0.2)
    await nursery.start(venue.serve)
    venue.freeze()
    async with open_websocket_url(books_url(venue)) as ws:
        await send(ws, {"op": "subscribe", "args": [ETH_BTC]})
        await recv(ws)
        seq = (await recv(ws))["data"][0]["seqId"]
        for _ in range(2):
            [keepalive] = (await recv(ws))["data"]
            assert keepalive["bids"] == keepalive["asks"] == []
            assert keepalive["prevSeqId"] == keepalive["seqId"] == seq


async def test_a_sequence_reset_restarts_seqids_below_prevseqid(okx: OkxSimulator) -> None:
    async with open_websocket_url(books_url(okx)) as ws:
        await send(ws, {"op": "subscribe", "args": [ETH_BTC]})
        await recv(ws)
        seq = (await recv(ws))["data"][0]["seqId"]
        assert seq > 1000
        okx.reset_sequence("ETHBTC")
        [reset] = (await recv(ws))["data"]
        assert reset["prevSeqId"] == seq
        assert reset["seqId"] < 100
        [after] = (await recv(ws))["data"]
        assert after["prevSeqId"] == reset["seqId"] < after["seqId"]


async def test_ping_is_answered_pong(okx: OkxSimulator) -> None:
    async with open_websocket_url(books_url(okx)) as ws:
        await ws.send_message("ping")
        assert await recv(ws) == "pong"


@pytest.mark.parametrize(
    ("request_text", "code"),
    [
        ("hello", "60012"),
        ("[1]", "60012"),
        ('{"op": "login", "args": []}', "60019"),
        ('{"op": "subscribe"}', "60013"),
        ('{"op": "subscribe", "args": ["books"]}', "60013"),
        ('{"op": "subscribe", "args": [{"channel": "books", "instId": "XYZ-ABC"}]}', "60018"),
        ('{"op": "subscribe", "args": [{"channel": "books", "instId": "eth-btc"}]}', "60018"),
        ('{"op": "subscribe", "args": [{"channel": "trades", "instId": "ETH-BTC"}]}', "60018"),
    ],
)
async def test_bad_requests_get_okx_errors_and_the_connection_still_serves(
    okx: OkxSimulator, request_text: str, code: str
) -> None:
    async with open_websocket_url(books_url(okx)) as ws:
        await ws.send_message(request_text)
        error = await recv(ws)
        assert error["event"] == "error"
        assert error["code"] == code
        assert error["msg"]
        await send(ws, {"op": "subscribe", "args": [ETH_BTC]})
        assert (await recv(ws))["event"] == "subscribe"
        assert (await recv(ws))["action"] == "snapshot"


async def test_unsubscribe_acks_and_stops_the_data(okx: OkxSimulator) -> None:
    async with open_websocket_url(books_url(okx)) as ws:
        await send(ws, {"op": "subscribe", "args": [ETH_BTC]})
        await recv(ws)
        await recv(ws)
        await send(ws, {"op": "unsubscribe", "args": [ETH_BTC]})
        while (message := await recv(ws)).get("event") != "unsubscribe":
            assert message["action"] == "update"  # pushed before the unsubscribe arrived
        assert message["arg"] == ETH_BTC
        await ws.send_message("ping")
        assert await recv(ws) == "pong", "no data after the unsubscribe ack"


async def test_rejected_subscriptions_get_an_error(okx: OkxSimulator) -> None:
    okx.reject_subscriptions()
    async with open_websocket_url(books_url(okx)) as ws:
        await send(ws, {"op": "subscribe", "args": [ETH_BTC]})
        error = await recv(ws)
        assert (error["event"], error["code"]) == ("error", "64007")
    assert okx.subscriptions_rejected == 1


async def test_only_the_public_path_is_served(okx: OkxSimulator) -> None:
    for path in ("", "/ws/v5/private", "/ws/v5/business"):
        with pytest.raises(ConnectionRejected) as excinfo:
            async with open_websocket_url(okx.url + path):
                pass
        assert excinfo.value.status_code == 404


async def test_a_silent_client_is_closed_after_the_idle_timeout(nursery: trio.Nursery) -> None:
    venue = OkxSimulator(Market(seed=23), seed=23, idle_timeout=0.3)
    await nursery.start(venue.serve)
    async with open_websocket_url(books_url(venue)) as ws:
        # Pinging keeps it open well past the limit.
        for _ in range(6):
            await trio.sleep(0.1)
            await ws.send_message("ping")
            assert await recv(ws) == "pong"
        opened = trio.current_time()
        with pytest.raises(ConnectionClosed) as excinfo:
            await recv(ws)
        reason = excinfo.value.reason
        assert reason is not None
        assert reason.code == 4004
        assert 0.2 <= trio.current_time() - opened < 1.0


@pytest.mark.parametrize("via", ["send_notice", "reconnect fault"])
async def test_the_notice_is_64008_then_the_connection_closes(okx: OkxSimulator, via: str) -> None:
    async with open_websocket_url(books_url(okx)) as ws:
        await ws.send_message("ping")
        await recv(ws)
        if via == "send_notice":
            await okx.send_notice(grace=0.2)
        else:  # what `simulate --fault okx:reconnect-every=S` and chaos send
            await ask_to_reconnect(okx, grace=0.2)
        notice = await recv(ws)
        assert (notice["event"], notice["code"]) == ("notice", "64008")
        assert "service upgrade" in notice["msg"]
        with pytest.raises(ConnectionClosed):
            await recv(ws)


# --- the feed against the simulator -----------------------------------------------------------


class Watcher:
    """Collects a feed's events: the latest book per symbol, and the order things happened."""

    def __init__(self, events: trio.MemoryReceiveChannel[BookEvent]) -> None:
        self.events = events
        self.latest: dict[str, VenueBook] = {}
        self.history: list[BookEvent] = []

    async def run(self) -> None:
        async for event in self.events:
            self.history.append(event)
            if isinstance(event, VenueBook):
                self.latest[event.symbol] = event

    def matches(self, venue: OkxSimulator, symbol: str) -> bool:
        """The feed's latest book of `symbol` is the top 10 of what the venue last sent."""
        mine, sent = self.latest.get(symbol), venue.book(symbol)
        return (
            mine is not None
            and sent is not None
            and mine.bids == sent.bids[:10]
            and mine.asks == sent.asks[:10]
        )

    def downs(self, symbol: str) -> list[int]:
        return [
            index
            for index, event in enumerate(self.history)
            if isinstance(event, VenueDown) and symbol in event.symbols
        ]

    def back_after(self, index: int, symbol: str) -> bool:
        return any(
            isinstance(event, VenueBook) and event.symbol == symbol
            for event in self.history[index + 1 :]
        )


async def watch(
    nursery: trio.Nursery, venue: OkxSimulator, adapter: OkxAdapter | None = None, **options: Any
) -> tuple[Feed, Watcher]:
    feed, events = start_feed(nursery, adapter or OkxAdapter(SYMBOLS, 10), venue.url, **options)
    watcher = Watcher(events)
    nursery.start_soon(watcher.run)
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: set(watcher.latest) == set(SYMBOLS))
    return feed, watcher


async def settled(venue: OkxSimulator, watcher: Watcher) -> None:
    """Freeze the venue, then wait until the feed holds exactly what it last sent."""
    venue.freeze()
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: all(watcher.matches(venue, s) for s in SYMBOLS))


async def test_the_feed_holds_the_venues_books_for_two_symbols(
    nursery: trio.Nursery, okx: OkxSimulator
) -> None:
    feed, watcher = await watch(nursery, okx)
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: okx.data_messages_sent > 40)  # many deltas applied
    await settled(okx, watcher)
    assert feed.stats.resyncs == 0
    assert feed.stats.malformed == 0
    assert feed.stats.state is FeedState.LIVE


@pytest.mark.parametrize("fault", OkxSimulator.supported_faults)
async def test_each_continuity_fault_resyncs_once_and_the_book_comes_back(
    nursery: trio.Nursery, okx: OkxSimulator, fault: str
) -> None:
    feed, watcher = await watch(nursery, okx)
    assert okx.inject(fault, "ETHBTC") == 1
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: feed.stats.resyncs >= 1)
        await wait_until(
            lambda: any(watcher.back_after(i, "ETHBTC") for i in watcher.downs("ETHBTC"))
        )
    await settled(okx, watcher)
    assert feed.stats.resyncs == 1
    assert len(watcher.downs("ETHBTC")) == 1
    assert watcher.downs("BTCUSDT") == [], "only the broken symbol leaves the book"
    assert feed.stats.reconnects == 0, "resynced on the same connection"


async def test_keepalives_and_a_sequence_reset_keep_the_book(nursery: trio.Nursery) -> None:
    venue = OkxSimulator(Market(seed=24), seed=24, keepalive_interval=0.1)
    await nursery.start(venue.serve)
    feed, watcher = await watch(nursery, venue)
    venue.reset_sequence("ETHBTC")
    venue.reset_sequence("BTCUSDT")
    sent = venue.data_messages_sent
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: venue.data_messages_sent > sent + 10)
    await settled(venue, watcher)
    frozen_at = venue.data_messages_sent
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: venue.data_messages_sent >= frozen_at + 4)  # keep-alives
    assert all(watcher.matches(venue, s) for s in SYMBOLS)
    assert feed.stats.resyncs == 0
    assert feed.stats.malformed == 0


async def test_pings_keep_a_quiet_connection_open(nursery: trio.Nursery) -> None:
    venue = OkxSimulator(Market(seed=25), seed=25, idle_timeout=0.3)
    await nursery.start(venue.serve)
    feed, _ = await watch(nursery, venue, FastPing(SYMBOLS, 10), liveness_timeout=0.5)
    venue.freeze()
    pongs_before = feed.stats.messages
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: feed.stats.messages >= pongs_before + 15)  # ~1.5 s of pongs
    assert venue.connections_total == 1
    assert feed.stats.state is FeedState.LIVE


async def test_unanswered_pings_on_a_quiet_book_mean_a_stale_connection(
    nursery: trio.Nursery,
) -> None:
    venue = OkxSimulator(Market(seed=27), seed=27)
    await nursery.start(venue.serve)
    feed, watcher = await watch(nursery, venue, FastPing(SYMBOLS, 10), liveness_timeout=0.5)
    venue.freeze()
    venue.ignore_heartbeats()
    with trio.fail_after(TIMEOUT):
        # At least: the replacement connection goes stale too, and on a busy machine it may
        # do so before this check runs again.
        await wait_until(lambda: feed.stats.stalls >= 1)
    down = [event for event in watcher.history if isinstance(event, VenueDown)]
    assert down
    assert "stale" in down[0].reason
    assert venue.heartbeats_ignored >= 3


async def test_the_upgrade_notice_hands_over_to_a_new_connection_without_a_gap(
    nursery: trio.Nursery, okx: OkxSimulator
) -> None:
    slow = Backoff(initial=10.0, maximum=10.0)  # any backoff would show as a 10 s wait
    feed, watcher = await watch(nursery, okx, backoff=slow)
    await okx.send_notice()
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: okx.connections_total == 2 and okx.connections == 1)
    assert feed.stats.handovers == 1
    await settled(okx, watcher)
    assert not [event for event in watcher.history if isinstance(event, VenueDown)]


async def test_a_dropped_connection_reconnects_and_resubscribes(
    nursery: trio.Nursery, okx: OkxSimulator
) -> None:
    feed, watcher = await watch(nursery, okx)
    okx.drop_connections()
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: okx.connections_total == 2 and okx.connections == 1)
        await wait_until(
            lambda: all(watcher.back_after(i, "ETHBTC") for i in watcher.downs("ETHBTC"))
        )
    await settled(okx, watcher)
    assert feed.stats.reconnects == 1
    assert watcher.downs("ETHBTC")
    assert watcher.downs("BTCUSDT")


@pytest.mark.parametrize("kind", [kind for kind in MALFORMED_KINDS if kind != "huge"])
async def test_a_malformed_message_is_counted_and_the_feed_goes_on(
    nursery: trio.Nursery, okx: OkxSimulator, kind: str
) -> None:
    feed, watcher = await watch(nursery, okx)
    await okx.send_malformed(kind, "ETHBTC")
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: feed.stats.malformed == 1)
    sent = okx.data_messages_sent
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: okx.data_messages_sent > sent + 5)
    await settled(okx, watcher)
    assert feed.stats.resyncs == 0
    assert feed.stats.reconnects == 0
    assert not [event for event in watcher.history if isinstance(event, VenueDown)]


async def test_a_huge_message_costs_one_connection_and_the_book_comes_back(
    nursery: trio.Nursery, okx: OkxSimulator
) -> None:
    feed, watcher = await watch(nursery, okx)
    await okx.send_malformed("huge", "ETHBTC", wait=0.1)  # 8 MiB: refused by size
    # Building and pushing 8 MiB takes a while on a busy machine: a longer bound.
    with trio.fail_after(3 * TIMEOUT):
        await wait_until(lambda: feed.stats.reconnects == 1)
        await wait_until(
            lambda: all(watcher.back_after(i, "ETHBTC") for i in watcher.downs("ETHBTC"))
        )
    await settled(okx, watcher)
    assert feed.stats.reconnects == 1


async def test_a_stream_with_garbage_in_place_of_data_resyncs_and_recovers(
    nursery: trio.Nursery, okx: OkxSimulator
) -> None:
    feed, watcher = await watch(nursery, okx)
    # A junk message in place of an update is also a missing update: a resync each time.
    okx.garbage_rate(0.2)
    with trio.fail_after(TIMEOUT):
        await wait_until(lambda: feed.stats.malformed >= 3 and feed.stats.resyncs >= 1)
    okx.reset_faults()
    await settled(okx, watcher)
    assert feed.stats.state is FeedState.LIVE


async def test_the_service_streams_okx_merged_with_binance(nursery: trio.Nursery) -> None:
    """End to end: `okx` is a venue users can name, and its book reaches gRPC clients."""
    market = Market(seed=26)
    venues: dict[str, SimulatedVenue] = {
        "binance": BinanceSimulator(market, seed=26),
        "okx": OkxSimulator(market, seed=26),
    }
    for venue in venues.values():
        await nursery.start(venue.serve)
    config = ServeConfig(
        port=0,
        symbols=SYMBOLS,
        venues=tuple(venues),
        venue_urls={name: venue.url for name, venue in venues.items()},
    )
    service: RunningService = await nursery.start(functools.partial(run_service, config))
    for symbol in SYMBOLS:
        await first_summary(
            service.port, symbol, lambda s: tuple(s.live_exchanges) == ("binance", "okx")
        )
    for venue in venues.values():
        venue.freeze()

    def merged(summary: Summary) -> bool:
        books = {name: venue.book("ETHBTC") for name, venue in venues.items()}
        expected = naive_merge({name: book for name, book in books.items() if book is not None})
        return (levels(summary.bids), levels(summary.asks)) == expected

    summary = await first_summary(service.port, "ETHBTC", merged)
    assert {level.exchange for level in [*summary.bids, *summary.asks]} <= {"binance", "okx"}
