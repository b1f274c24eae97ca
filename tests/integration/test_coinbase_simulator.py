"""The Coinbase simulator over a real socket, seen by a plain trio-websocket client: the
Advanced Trade protocol the adapter relies on (acks, snapshot then updates, heartbeats,
connection-wide sequence_num, errors, the subscribe deadline) and its injectable faults."""

from __future__ import annotations

import itertools
import re
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

from aggtrio.simulator.coinbase import CoinbaseSimulator
from aggtrio.simulator.market import Market

TIMEOUT = 3.0
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
PRICE = re.compile(r"^\d+\.\d{8}$")  # ETH-BTC: the pair's 8 decimals


@pytest.fixture
async def coinbase(nursery: trio.Nursery) -> CoinbaseSimulator:
    venue = CoinbaseSimulator(
        Market(seed=21),
        seed=21,
        depth=50,
        updates_per_second=100.0,
        heartbeat_interval=0.05,
        subscribe_timeout=0.5,
    )
    await nursery.start(venue.serve)
    return venue


async def send(ws: WebSocketConnection, message: object) -> None:
    await ws.send_message(orjson.dumps(message).decode())


async def recv(ws: WebSocketConnection) -> Any:
    with trio.fail_after(TIMEOUT):
        return orjson.loads(await ws.get_message())


async def recv_where(ws: WebSocketConnection, channel: str) -> Any:
    with trio.fail_after(TIMEOUT):
        while (message := await recv(ws)).get("channel") != channel:
            pass
    return message


async def closed_by_venue(ws: WebSocketConnection) -> ConnectionClosed:
    """Read until the venue closes the connection."""
    while True:
        try:
            await ws.get_message()
        except ConnectionClosed as closed:
            return closed


def subscribe(channel: str, *products: str, kind: str = "subscribe") -> dict[str, Any]:
    return {"type": kind, "product_ids": list(products), "channel": channel}


async def test_subscribe_ack_then_a_full_snapshot_then_updates(coinbase: CoinbaseSimulator) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        await send(ws, subscribe("level2", "ETH-BTC"))
        ack = await recv(ws)
        assert ack["channel"] == "subscriptions"
        assert ack["sequence_num"] == 0
        assert ack["events"] == [{"subscriptions": {"level2": ["ETH-BTC"]}}]
        snapshot = await recv(ws)
        assert set(snapshot) == {"channel", "client_id", "timestamp", "sequence_num", "events"}
        assert snapshot["channel"] == "l2_data"
        assert snapshot["sequence_num"] == 1
        assert TIMESTAMP.match(snapshot["timestamp"])
        [event] = snapshot["events"]
        assert event["type"] == "snapshot"
        assert event["product_id"] == "ETH-BTC"
        updates = event["updates"]
        assert {u["side"] for u in updates} == {"bid", "offer"}
        assert len(updates) == 2 * 50  # the whole (simulated) book
        for update in updates:
            assert set(update) == {"side", "event_time", "price_level", "new_quantity"}
            assert PRICE.match(update["price_level"])
            assert float(update["new_quantity"]) > 0
        bids = [float(u["price_level"]) for u in updates if u["side"] == "bid"]
        asks = [float(u["price_level"]) for u in updates if u["side"] == "offer"]
        assert bids == sorted(bids, reverse=True)
        assert asks == sorted(asks)
        assert bids[0] < asks[0]
        update = await recv(ws)
        assert update["sequence_num"] == 2
        assert update["events"][0]["type"] == "update"
        assert update["events"][0]["updates"], "an update carries the changed levels"


async def test_sequence_num_counts_every_message_of_the_connection(
    coinbase: CoinbaseSimulator,
) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        await send(ws, subscribe("level2", "ETH-BTC", "BTC-USDT"))
        await send(ws, subscribe("heartbeats"))
        seen: list[tuple[str, int]] = []
        counters: list[int] = []
        while len(counters) < 4:
            message = await recv(ws)
            seen.append((message["channel"], message["sequence_num"]))
            if message["channel"] == "heartbeats":
                [event] = message["events"]
                counters.append(event["heartbeat_counter"])
                assert event["current_time"].endswith(" +0000 UTC")
        assert [number for _, number in seen] == list(range(len(seen)))
        assert {channel for channel, _ in seen} == {"subscriptions", "l2_data", "heartbeats"}
        assert counters == list(range(counters[0], counters[0] + 4))


async def test_heartbeats_go_on_while_data_is_muted(coinbase: CoinbaseSimulator) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        await send(ws, subscribe("heartbeats"))
        assert (await recv(ws))["events"] == [{"subscriptions": {"heartbeats": ["heartbeats"]}}]
        coinbase.mute()
        for _ in range(3):
            assert (await recv(ws))["channel"] == "heartbeats"


async def test_unsubscribe_stops_a_product_and_acks_what_is_left(
    coinbase: CoinbaseSimulator,
) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        await send(ws, subscribe("level2", "ETH-BTC", "BTC-USDT"))
        await recv_where(ws, "l2_data")
        await send(ws, subscribe("level2", "ETH-BTC", kind="unsubscribe"))
        ack = await recv_where(ws, "subscriptions")
        assert ack["events"] == [{"subscriptions": {"level2": ["BTC-USDT"]}}]
        # What was in flight, then only BTC-USDT.
        with trio.move_on_after(0.1):
            while True:
                await ws.get_message()
        for _ in range(5):
            message = await recv_where(ws, "l2_data")
            assert message["events"][0]["product_id"] == "BTC-USDT"
        await send(ws, subscribe("level2", kind="unsubscribe"))  # no products: all of level2
        assert (await recv_where(ws, "subscriptions"))["events"] == [{"subscriptions": {}}]


async def test_resubscribing_sends_a_fresh_snapshot(coinbase: CoinbaseSimulator) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        await send(ws, subscribe("level2", "ETH-BTC"))
        await recv_where(ws, "l2_data")
        await send(ws, subscribe("level2", "ETH-BTC"))
        await recv_where(ws, "subscriptions")
        with trio.fail_after(TIMEOUT):
            while (await recv_where(ws, "l2_data"))["events"][0]["type"] != "snapshot":
                pass


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        ("not json", "malformed"),
        ([1, 2], "malformed"),
        ({"type": "ping"}, "malformed"),
        (subscribe("level2", "NOPE-XYZ"), "unknown product"),
        (subscribe("level2", "ethbtc"), "unknown product"),
        (subscribe("level2"), "unknown product"),
        ({"type": "subscribe", "product_ids": "ETH-BTC", "channel": "level2"}, "malformed"),
        (subscribe("ticker", "ETH-BTC"), "unsupported channel"),
    ],
)
async def test_bad_requests_get_an_error(
    coinbase: CoinbaseSimulator, request_: object, why: str
) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        if isinstance(request_, str):
            await ws.send_message(request_)
        else:
            await send(ws, request_)
        error = await recv(ws)
        assert error["type"] == "error"
        assert why in error["message"]
        assert "sequence_num" not in error


async def test_only_listed_products_are_served(nursery: trio.Nursery) -> None:
    venue = CoinbaseSimulator(Market(seed=2), seed=2, depth=10, products=["ETH-BTC"])
    await nursery.start(venue.serve)
    async with open_websocket_url(venue.url) as ws:
        await send(ws, subscribe("level2", "BTC-USDT"))
        assert (await recv(ws))["type"] == "error"
        await send(ws, subscribe("level2", "ETH-BTC"))
        assert (await recv(ws))["channel"] == "subscriptions"


async def test_reject_subscriptions_answers_with_an_error(coinbase: CoinbaseSimulator) -> None:
    coinbase.reject_subscriptions()
    async with open_websocket_url(coinbase.url) as ws:
        await send(ws, subscribe("level2", "ETH-BTC"))
        assert (await recv(ws))["type"] == "error"
        assert coinbase.subscriptions_rejected == 1


async def test_a_connection_that_never_subscribes_is_closed(coinbase: CoinbaseSimulator) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        opened = trio.current_time()
        await send(ws, subscribe("level2", "NOPE-XYZ"))  # a failed subscribe does not count
        with trio.fail_after(TIMEOUT):
            closed = await closed_by_venue(ws)
        assert 0.5 <= trio.current_time() - opened < 1.5
        assert closed.reason is not None
        assert closed.reason.code == 1008


async def test_a_subscribed_connection_stays_open(coinbase: CoinbaseSimulator) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        await send(ws, subscribe("heartbeats"))
        with trio.move_on_after(1.0):  # twice the subscribe deadline
            while True:
                await recv(ws)
        assert not ws.closed


async def test_other_paths_are_not_found(coinbase: CoinbaseSimulator) -> None:
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(coinbase.url + "/ws/v2"):
            pass
    assert rejected.value.status_code == 404


@pytest.mark.parametrize("fault", ["gap", "duplicate", "reorder"])
async def test_injected_faults_show_in_the_sequence(
    coinbase: CoinbaseSimulator, fault: str
) -> None:
    async with open_websocket_url(coinbase.url) as ws:
        await send(ws, subscribe("level2", "ETH-BTC"))
        snapshot = await recv_where(ws, "l2_data")
        assert coinbase.inject(fault, "ETH-BTC") == 1
        numbers = [snapshot["sequence_num"]]
        numbers += [(await recv(ws))["sequence_num"] for _ in range(6)]
    steps = [b - a for a, b in itertools.pairwise(numbers)]
    broken = [step for step in steps if step != 1]
    # reorder: the held message goes out right after the one that overtook it.
    expected = {"gap": [2], "duplicate": [0], "reorder": [2, -1, 2]}[fault]
    assert broken == expected, numbers
    with pytest.raises(ValueError, match="bad-checksum"):
        coinbase.inject("bad-checksum")
