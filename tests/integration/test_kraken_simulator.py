"""The Kraken simulator speaks Kraken's WebSocket v2 protocol, checked from a raw client.

Book messages are read with the standard library's JSON decoder keeping each number's text,
as a Kraken client must; checksums are recomputed by the test's own reference book, written
from Kraken's checksum guide, not by the simulator's or the adapter's code.
"""

from __future__ import annotations

import json
import re
import zlib
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

from aggtrio.simulator import Market, make_simulator
from aggtrio.simulator.faults import ask_to_reconnect
from aggtrio.simulator.kraken import KrakenSimulator, checksum, kraken_pair, parse_pair

from ..unit.test_kraken_adapter import ReferenceBook

TIMEOUT = 3.0
NUMBER = json.JSONDecoder(parse_float=str, parse_int=str)


@pytest.fixture
async def kraken(nursery: trio.Nursery) -> KrakenSimulator:
    venue = KrakenSimulator(
        Market(seed=31), seed=31, updates_per_second=100.0, heartbeat_interval=0.1
    )
    venue.close_timeout = 0.5
    await nursery.start(venue.serve)
    return venue


def url(venue: KrakenSimulator) -> str:
    return f"{venue.url}/v2"


async def send(ws: WebSocketConnection, message: object) -> None:
    await ws.send_message(orjson.dumps(message).decode())


async def recv_text(ws: WebSocketConnection) -> str:
    with trio.fail_after(TIMEOUT):
        message = await ws.get_message()
    assert isinstance(message, str)
    return message


async def recv(ws: WebSocketConnection) -> Any:
    return NUMBER.decode(await recv_text(ws))


async def recv_where(ws: WebSocketConnection, wanted: dict[str, Any]) -> Any:
    """The next message whose top-level fields include `wanted`."""
    with trio.fail_after(TIMEOUT):
        while True:
            message = await recv(ws)
            if all(message.get(key) == value for key, value in wanted.items()):
                return message


async def until_closed(ws: WebSocketConnection) -> tuple[list[Any], int]:
    """Read until the venue closes the connection: what came, and the close code."""
    seen: list[Any] = []
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                seen.append(await recv(ws))
            except ConnectionClosed as exc:
                return seen, exc.reason.code if exc.reason is not None else -1


def subscribe(*pairs: str, depth: int = 10, req_id: int = 1) -> dict[str, Any]:
    params = {"channel": "book", "symbol": list(pairs), "depth": depth, "snapshot": True}
    return {"method": "subscribe", "params": params, "req_id": req_id}


def levels(entry: dict[str, Any], side: str) -> list[tuple[str, str]]:
    return [(level["price"], level["qty"]) for level in entry[side]]


async def test_status_on_connect_and_only_the_v2_path(kraken: KrakenSimulator) -> None:
    async with open_websocket_url(url(kraken)) as ws:
        status = await recv(ws)
    assert status["channel"] == "status"
    assert status["type"] == "update"
    assert status["data"][0]["system"] == "online"
    assert status["data"][0]["api_version"] == "v2"
    for path in ("", "/v1", "/v2/book"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"{kraken.url}{path}"):
                pass
        assert rejected.value.status_code == 404


async def test_subscribe_acks_each_pair_then_snapshot_then_checksummed_updates(
    kraken: KrakenSimulator,
) -> None:
    async with open_websocket_url(url(kraken)) as ws:
        await recv_where(ws, {"channel": "status"})
        await send(ws, subscribe("ETH/BTC", "BTC/USDT", req_id=7))
        acks = [await recv_where(ws, {"method": "subscribe"}) for _ in range(2)]
        assert [ack["result"] for ack in acks] == [
            {"channel": "book", "depth": "10", "snapshot": True, "symbol": pair}
            for pair in ("ETH/BTC", "BTC/USDT")
        ]
        assert all(ack["success"] is True and ack["req_id"] == "7" for ack in acks)
        assert all({"time_in", "time_out"} <= set(ack) for ack in acks)

        books = {pair: ReferenceBook(10, 8, 8) for pair in ("ETH/BTC", "BTC/USDT")}
        books["BTC/USDT"].price_decimals = 2
        seen_types: list[str] = []

        def in_step() -> bool:
            """The reference book, kept from the messages alone, is the venue's book."""
            for pair, book in books.items():
                sent = kraken.book(pair)
                if sent is None or book.top(10) != (sent.bids, sent.asks):
                    return False
            return True

        with trio.fail_after(TIMEOUT):
            while seen_types.count("update") < 60 or not in_step():
                if seen_types.count("update") >= 60:
                    kraken.freeze()  # then read what is in flight
                text = await recv_text(ws)
                message = NUMBER.decode(text)
                if message.get("channel") != "book":
                    continue
                [entry] = message["data"]
                book = books[entry["symbol"]]
                bids, asks = levels(entry, "bids"), levels(entry, "asks")
                if message["type"] == "snapshot":
                    assert len(bids) == len(asks) == 10
                    # JSON numbers, trailing zeros kept: 8 decimals for ETH/BTC.
                    if entry["symbol"] == "ETH/BTC":
                        assert re.search(r'"price":0\.\d{8}[,}]', text)
                    book.bids, book.asks = {}, {}
                book.apply(bids, asks)
                assert int(entry["checksum"]) == book.checksum()
                seen_types.append(message["type"])
        assert seen_types[:2] == ["snapshot", "snapshot"]
        assert seen_types.count("snapshot") == 2


async def test_errors_for_unknown_pairs_and_bad_requests(kraken: KrakenSimulator) -> None:
    async with open_websocket_url(url(kraken)) as ws:
        await send(ws, subscribe("ETH/XYZ", "ETHBTC", req_id=3))
        for pair in ("ETH/XYZ", "ETHBTC"):
            reply = await recv_where(ws, {"method": "subscribe"})
            assert reply["success"] is False
            assert reply["symbol"] == pair
            assert reply["req_id"] == "3"
            assert "not supported" in reply["error"]
        await send(ws, subscribe("ETH/BTC", depth=7))
        assert "depth" in (await recv_where(ws, {"method": "subscribe"}))["error"]
        await send(ws, {"method": "subscribe", "params": {"channel": "book"}})
        assert (await recv_where(ws, {"method": "subscribe"}))["success"] is False
        await send(ws, {"method": "fly", "req_id": 4})
        assert (await recv_where(ws, {"method": "fly"}))["error"] == "Method not supported"
        await ws.send_message("{not json")
        reply = await recv_where(ws, {"success": False})
        assert reply["error"] == "Malformed request"
        await send(
            ws, {"method": "unsubscribe", "params": {"channel": "book", "symbol": ["ETH/BTC"]}}
        )
        assert (await recv_where(ws, {"method": "unsubscribe"}))["success"] is False
    assert kraken.data_messages_sent == 0


async def test_ping_pong_heartbeats_and_unsubscribe(kraken: KrakenSimulator) -> None:
    async with open_websocket_url(url(kraken)) as ws:
        await send(ws, {"method": "ping", "req_id": 42})
        pong = await recv_where(ws, {"method": "pong"})
        assert pong["req_id"] == "42"
        await send(ws, subscribe("ETH/BTC"))
        await recv_where(ws, {"channel": "heartbeat"})  # only once subscribed
        await send(
            ws, {"method": "unsubscribe", "params": {"channel": "book", "symbol": ["ETH/BTC"]}}
        )
        reply = await recv_where(ws, {"method": "unsubscribe"})
        assert reply["success"] is True
        assert reply["result"]["symbol"] == "ETH/BTC"
        sent = kraken.data_messages_sent
        with trio.move_on_after(0.4):
            while True:  # books may be in flight; then silence: no heartbeats, no books
                message = await recv(ws)
                assert message.get("channel") == "book"
        assert kraken.data_messages_sent == sent


async def test_ignored_pings_and_enforced_pings(nursery: trio.Nursery) -> None:
    venue = KrakenSimulator(Market(seed=32), seed=32, client_ping_timeout=0.3)
    await nursery.start(venue.serve)
    venue.ignore_heartbeats()
    async with open_websocket_url(url(venue)) as ws:
        await recv_where(ws, {"channel": "status"})
        await send(ws, {"method": "ping"})
        seen, code = await until_closed(ws)
    assert not [message for message in seen if message.get("method") == "pong"]
    assert venue.heartbeats_ignored == 1
    assert code == 1008


async def test_status_notices_and_maintenance(kraken: KrakenSimulator) -> None:
    async with open_websocket_url(url(kraken)) as ws:
        await recv_where(ws, {"channel": "status"})
        await kraken.send_status("cancel_only")
        assert (await recv_where(ws, {"channel": "status"}))["data"][0]["system"] == "cancel_only"
        await ask_to_reconnect(kraken, grace=0.1)  # --fault kraken:reconnect-every, chaos
        assert (await recv_where(ws, {"channel": "status"}))["data"][0]["system"] == "maintenance"
        await until_closed(ws)


def test_checksum_matches_kraken_guide_example() -> None:
    # The guide's v1 example level "0.05000" qty "0.00000304" spells "5000304".
    bids: tuple[tuple[str, str], ...] = ()
    asks = (("0.05000", "0.00000304"),)
    assert checksum(bids, asks) == zlib.crc32(b"5000304")


def test_pairs_are_spelled_as_kraken_does() -> None:
    assert kraken_pair("ethbtc") == "ETH/BTC"
    assert parse_pair("BTC/USDT") == "BTCUSDT"
    assert parse_pair("BTCUSDT") is None
    assert parse_pair("ETH/XYZ") is None
    assert parse_pair(["ETH/BTC"]) is None


def test_inject_knows_every_continuity_fault_and_make_simulator_knows_kraken() -> None:
    venue = make_simulator("kraken", Market(seed=1))
    assert isinstance(venue, KrakenSimulator)
    assert venue.supported_faults == ("gap", "duplicate", "reorder", "bad-checksum")
    with pytest.raises(ValueError, match="cannot inject"):
        venue.inject("sequence-reset")
