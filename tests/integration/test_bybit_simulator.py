"""The Bybit simulator as a plain WebSocket client sees it: Bybit v5 spot's requests, replies,
snapshot-then-delta topics with consecutive ``u``, ping timeout and injected faults."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from aggtrio.simulator import Market, SimBook
from aggtrio.simulator.bybit import BybitSimulator

TIMEOUT = 5.0
TOPIC = "orderbook.50.ETHBTC"


@pytest.fixture
async def bybit(nursery: trio.Nursery) -> BybitSimulator:
    venue = BybitSimulator(Market(seed=31), seed=31, listed=["ETHBTC", "BTCUSDT"])
    await nursery.start(venue.serve)
    return venue


def spot_url(venue: BybitSimulator) -> str:
    return f"{venue.url}/v5/public/spot"


async def send(ws: WebSocketConnection, message: object) -> None:
    await ws.send_message(json.dumps(message))


async def recv(ws: WebSocketConnection) -> Any:
    with trio.fail_after(TIMEOUT):
        return json.loads(await ws.get_message())


async def subscribe(ws: WebSocketConnection, *topics: str, req_id: str = "1") -> Any:
    await send(ws, {"req_id": req_id, "op": "subscribe", "args": list(topics)})
    return await recv(ws)


class Held:
    """The book a client builds from one topic's snapshot and deltas, as Bybit says to."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.bids: dict[str, str] = dict(snapshot["data"]["b"])
        self.asks: dict[str, str] = dict(snapshot["data"]["a"])
        self.u: int = snapshot["data"]["u"]

    def apply(self, delta: dict[str, Any]) -> None:
        assert delta["type"] == "delta"
        assert delta["data"]["u"] == self.u + 1
        self.u = delta["data"]["u"]
        for side, changes in ((self.bids, delta["data"]["b"]), (self.asks, delta["data"]["a"])):
            for price, qty in changes:
                if qty == "0":
                    side.pop(price, None)
                else:
                    side[price] = qty

    def as_book(self) -> SimBook:
        bids = sorted(((float(p), float(q)) for p, q in self.bids.items()), reverse=True)
        asks = sorted((float(p), float(q)) for p, q in self.asks.items())
        return SimBook(tuple(bids), tuple(asks))


async def test_subscribe_acks_then_snapshots_then_consecutive_deltas(
    bybit: BybitSimulator,
) -> None:
    async with open_websocket_url(spot_url(bybit)) as ws:
        ack = await subscribe(ws, TOPIC, "orderbook.50.BTCUSDT", req_id="10001")
        assert ack == {
            "success": True,
            "ret_msg": "subscribe",
            "conn_id": ack["conn_id"],
            "req_id": "10001",
            "op": "subscribe",
        }
        held: dict[str, Held] = {}
        for _ in range(2):
            snapshot = await recv(ws)
            assert snapshot["type"] == "snapshot"
            assert set(snapshot) == {"topic", "type", "ts", "data", "cts"}
            assert set(snapshot["data"]) == {"s", "b", "a", "u", "seq"}
            assert snapshot["data"]["s"] == snapshot["topic"].rsplit(".", 1)[1]
            assert len(snapshot["data"]["b"]) == len(snapshot["data"]["a"]) == 50
            held[snapshot["topic"]] = Held(snapshot)
        assert set(held) == {TOPIC, "orderbook.50.BTCUSDT"}
        for _ in range(30):
            message = await recv(ws)
            held[message["topic"]].apply(message)  # checks u == previous u + 1
        bybit.freeze()
        with trio.move_on_after(0.3):
            while True:
                message = await recv(ws)
                held[message["topic"]].apply(message)
        assert held[TOPIC].as_book() == bybit.book("ETHBTC")
        assert held["orderbook.50.BTCUSDT"].as_book() == bybit.book("BTCUSDT")


async def test_numbers_are_printed_as_bybit_spot_does(bybit: BybitSimulator) -> None:
    async with open_websocket_url(spot_url(bybit)) as ws:
        await subscribe(ws, TOPIC)
        snapshot = await recv(ws)
    texts = [text for level in snapshot["data"]["b"] + snapshot["data"]["a"] for text in level]
    assert all(isinstance(text, str) for text in texts)
    # The pair's precision, trailing zeros dropped: "0.035123", "1.5", "12".
    assert not [text for text in texts if "." in text and text.endswith(("0", "."))]
    assert all(len(text.partition(".")[2]) <= 8 for text in texts)


async def test_ping_is_answered_with_spots_pong(bybit: BybitSimulator) -> None:
    async with open_websocket_url(spot_url(bybit)) as ws:
        await send(ws, {"req_id": "100001", "op": "ping"})
        pong = await recv(ws)
        assert pong == {
            "success": True,
            "ret_msg": "pong",
            "conn_id": pong["conn_id"],
            "req_id": "100001",
            "op": "ping",
        }
        await send(ws, {"op": "ping"})
        assert "req_id" not in await recv(ws)
        bybit.ignore_heartbeats()
        await send(ws, {"op": "ping"})
        with trio.move_on_after(0.3):
            assert await ws.get_message() is None  # pragma: no cover - must stay silent
        assert bybit.heartbeats_ignored == 1


REFUSALS = {
    "unlisted symbol": ({"op": "subscribe", "args": ["orderbook.50.LTCBTC"]}, "Invalid symbol"),
    "lower-case symbol": ({"op": "subscribe", "args": ["orderbook.50.ethbtc"]}, "Invalid symbol"),
    "unserved depth": ({"op": "subscribe", "args": ["orderbook.7.ETHBTC"]}, "handler not found"),
    "other topic": ({"op": "subscribe", "args": ["publicTrade.ETHBTC"]}, "handler not found"),
    "eleven args": ({"op": "subscribe", "args": [TOPIC] * 11}, "args"),
    "args not a list": ({"op": "subscribe", "args": TOPIC}, "error"),
    "no args": ({"op": "subscribe"}, "error"),
    "unknown op": ({"op": "auth", "args": []}, "error"),
}


@pytest.mark.parametrize(("request_", "reason"), list(REFUSALS.values()), ids=list(REFUSALS))
async def test_bad_requests_are_refused_with_a_reason(
    bybit: BybitSimulator, request_: dict[str, Any], reason: str
) -> None:
    async with open_websocket_url(spot_url(bybit)) as ws:
        await send(ws, {"req_id": "7", **request_})
        reply = await recv(ws)
        assert reply["success"] is False
        assert reason in reply["ret_msg"]
        assert reply["req_id"] == "7"
        # Nothing was subscribed: a ping is the next thing answered.
        await send(ws, {"op": "ping"})
        assert (await recv(ws))["ret_msg"] == "pong"


async def test_invalid_json_and_a_repeated_subscription_are_refused(
    bybit: BybitSimulator,
) -> None:
    async with open_websocket_url(spot_url(bybit)) as ws:
        await ws.send_message("{not json")
        assert (await recv(ws))["success"] is False
        assert (await subscribe(ws, TOPIC))["success"] is True
        assert (await recv(ws))["type"] == "snapshot"
        bybit.freeze()
        reply = await subscribe(ws, TOPIC, req_id="2")
        while "success" not in reply:  # deltas already on their way
            reply = await recv(ws)
        assert reply["success"] is False
        assert "already subscribed" in reply["ret_msg"]


async def test_unsubscribe_stops_the_topic_and_resubscribe_starts_with_a_snapshot(
    bybit: BybitSimulator,
) -> None:
    async with open_websocket_url(spot_url(bybit)) as ws:
        await subscribe(ws, TOPIC)
        await recv(ws)  # the snapshot
        await send(ws, {"req_id": "2", "op": "unsubscribe", "args": [TOPIC]})
        reply = await recv(ws)
        while "success" not in reply:
            reply = await recv(ws)
        assert (reply["success"], reply["op"], reply["req_id"]) == (True, "unsubscribe", "2")
        with trio.move_on_after(0.4):
            message = await ws.get_message()
            raise AssertionError(f"data after unsubscribe: {message[:100]!r}")
        assert (await subscribe(ws, TOPIC, req_id="3"))["success"] is True
        assert (await recv(ws))["type"] == "snapshot"


async def test_other_paths_are_not_found(bybit: BybitSimulator) -> None:
    from trio_websocket import ConnectionRejected

    for path in ("/", "/v5/public/linear", "/spot/public/v3"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(bybit.url + path):
                pass  # pragma: no cover
        assert rejected.value.status_code == 404


async def test_a_client_that_never_pings_is_disconnected(nursery: trio.Nursery) -> None:
    venue = BybitSimulator(Market(seed=32), seed=32, ping_timeout=0.5)
    await nursery.start(venue.serve)

    async def keep_pinging(ws: WebSocketConnection) -> None:
        while True:
            await send(ws, {"op": "ping"})
            assert (await recv(ws))["ret_msg"] == "pong"
            await trio.sleep(0.1)

    async def read_until_closed(ws: WebSocketConnection) -> None:
        with trio.fail_after(TIMEOUT):
            while True:
                await ws.get_message()  # data flows, but data is not a ping

    async with open_websocket_url(spot_url(venue)) as pinging, trio.open_nursery() as pings:
        pings.start_soon(keep_pinging, pinging)
        opened = trio.current_time()
        async with open_websocket_url(spot_url(venue)) as silent:
            await subscribe(silent, TOPIC)
            with pytest.raises(ConnectionClosed):
                await read_until_closed(silent)
        assert 0.5 <= trio.current_time() - opened < 1.5
        assert venue.ping_timeouts == 1
        await trio.sleep(0.6)  # the one that pings outlives another timeout
        assert venue.ping_timeouts == 1
        assert venue.connections == 1
        pings.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("fault", "u_steps"), [("gap", {2}), ("duplicate", {0}), ("reorder", {2, -1})]
)
async def test_injected_faults_show_in_u(
    bybit: BybitSimulator, fault: str, u_steps: set[int]
) -> None:
    async with open_websocket_url(spot_url(bybit)) as ws:
        await subscribe(ws, TOPIC)
        last = (await recv(ws))["data"]["u"]
        assert bybit.inject(fault, "ETHBTC") == 1
        steps = []
        for _ in range(6):
            u = (await recv(ws))["data"]["u"]
            steps.append(u - last)
            last = u
        assert {step for step in steps if step != 1} == u_steps


def test_bybit_has_no_checksum_to_spoil() -> None:
    assert "bad-checksum" not in BybitSimulator.supported_faults


@pytest.mark.parametrize("restart", [False, True], ids=["resent", "service-restart"])
async def test_send_snapshot_mid_stream(bybit: BybitSimulator, restart: bool) -> None:
    async with open_websocket_url(spot_url(bybit)) as ws:
        await subscribe(ws, TOPIC)
        held = Held(await recv(ws))
        bybit.freeze()
        assert bybit.send_snapshot("ETHBTC", restart=restart) == 1
        message = await recv(ws)
        while message["type"] == "delta":
            held.apply(message)
            message = await recv(ws)
        assert message["data"]["u"] == (1 if restart else held.u + 1)
        assert Held(message).as_book() == bybit.book("ETHBTC")
        bybit.unfreeze()
        assert (await recv(ws))["data"]["u"] == message["data"]["u"] + 1


async def test_rejected_subscriptions_are_refused(bybit: BybitSimulator) -> None:
    bybit.reject_subscriptions()
    async with open_websocket_url(spot_url(bybit)) as ws:
        reply = await subscribe(ws, TOPIC)
    assert reply["success"] is False
    assert bybit.subscriptions_rejected == 1
