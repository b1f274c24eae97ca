"""A local Coinbase Advanced Trade market-data WebSocket: the ``level2`` and ``heartbeats``
channels.

Speaks what ``wss://advanced-trade-ws.coinbase.com`` does:

* Path ``/`` (any other path: HTTP 404). A connection that has not subscribed to anything
  within ``subscribe_timeout`` seconds (5 s, as documented) is closed.
* ``{"type": "subscribe" | "unsubscribe", "product_ids": [...], "channel": "level2" |
  "heartbeats"}``, one channel per message -> ``{"channel": "subscriptions", …, "events":
  [{"subscriptions": {"level2": [...], "heartbeats": ["heartbeats"]}}]}`` listing what the
  connection is subscribed to now. An unsubscribe without product ids drops the whole
  channel. Bad requests, unknown products and other channels get ``{"type": "error",
  "message": …}``.
* ``level2``: a snapshot of the whole book (``depth`` levels a side), then on each change
  an update with the changed levels' new absolute sizes (``"0"`` deletes), as ``l2_data``.
* ``heartbeats``: one message a second with a ``heartbeat_counter`` that counts up by one.
* Every message but errors carries ``sequence_num``, counting up by one per message of the
  connection across all channels (the DeltaVenue faults therefore show as gaps,
  duplicates or a number going back on the connection).

Coinbase documents no maintenance notice on this feed: a venue-side disconnect is just a
closed connection (:meth:`SimulatedVenue.close_connections`, :meth:`drop_connections`).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Collection, Sequence
from typing import Any

import orjson
import trio

from aggtrio.simulator.delta import DeltaSession, DeltaVenue, LevelChanges
from aggtrio.simulator.market import Market
from aggtrio.simulator.venue import Channel, Client, Rendered, Session
from aggtrio.symbols import parse_venue_pair

LEVEL2 = "level2"
HEARTBEATS = "heartbeats"
# (?) The texts of Coinbase's error messages are not documented; the shape is.
_BAD_REQUEST = "malformed request"
_UNKNOWN_CHANNEL = "unsupported channel"
_UNKNOWN_PRODUCT = "failure to subscribe: unknown product id"
_REJECTED = "failure to subscribe"
_SUBSCRIBE_TIMEOUT_REASON = "no subscription within the time limit"


def rfc3339(ns: int) -> str:
    """``2023-02-09T20:32:50.714964855Z``: Coinbase's message timestamps, nanoseconds."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos:09d}Z"


def _heartbeat_time(ns: int) -> str:
    """``2023-06-23 20:31:56.121961769 +0000 UTC``: how a heartbeat prints ``current_time``."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(seconds))}.{nanos:09d} +0000 UTC"


def _error(message: str) -> str:
    return orjson.dumps({"type": "error", "message": message}).decode()


def _entries(levels: object, side: str, event_time: str) -> list[object]:
    """One side's levels as l2 updates. Spoiled sides (malformed messages) pass through:
    a non-list becomes one bogus entry, a missing side an entry with no price or size."""
    if levels is None:
        return [{"side": side, "event_time": event_time}]
    if not isinstance(levels, list | tuple):
        return [levels]
    return [
        {"side": side, "event_time": event_time, "price_level": level[0], "new_quantity": level[1]}
        for level in levels
    ]


class CoinbaseSession(DeltaSession):
    """One Coinbase connection: its subscriptions and its connection-wide sequence_num."""

    def __init__(self, venue: CoinbaseSimulator) -> None:
        super().__init__(venue)
        self.coinbase = venue
        self._sequence = 0
        self._heartbeat_counter = 0
        self._heartbeats: trio.CancelScope | None = None
        self._subscribed = trio.Event()

    def next_sequence(self) -> int:
        """Take the next sequence_num (the caller sends that message next, with no
        checkpoint in between, so numbers reach the wire in order).

        Known limit: a data loop cancelled by an unsubscribe while its send waits for a
        congested socket never sends the number it took, which shows as a gap; the real
        venue would not skip one. The adapter resyncs by reconnecting, never unsubscribes.
        """
        number = self._sequence
        self._sequence += 1
        return number

    def _message(self, channel: str, events: list[Any], sequence: int) -> str:
        return orjson.dumps(
            {
                "channel": channel,
                "client_id": "",
                "timestamp": rfc3339(time.time_ns()),
                "sequence_num": sequence,
                "events": events,
            }
        ).decode()

    def _l2(self, channel: Channel, kind: str, bids: object, asks: object, sequence: int) -> str:
        event_time = rfc3339(time.time_ns())
        updates = _entries(bids, "bid", event_time) + _entries(asks, "offer", event_time)
        return self._message(
            "l2_data", [{"type": kind, "product_id": channel.name, "updates": updates}], sequence
        )

    # -- DeltaSession ----------------------------------------------------------------------

    def snapshot_message(self, channel: Channel, rendered: Rendered) -> str:
        return self._l2(channel, "snapshot", rendered.bids, rendered.asks, self.next_sequence())

    def update_message(
        self, channel: Channel, changes: LevelChanges, rendered: Rendered, *, bad_checksum: bool
    ) -> str:
        # Coinbase sends no checksum, so bad_checksum never applies (supported_faults).
        return self._l2(channel, "update", changes.bids, changes.asks, self.next_sequence())

    def payload(self, channel: Channel, rendered: Rendered) -> dict[str, Any]:
        return {"bids": rendered.bids, "asks": rendered.asks}

    def envelope(self, channel: Channel, payload: dict[str, Any]) -> object:
        # A malformed message carries the number the next real message will carry, without
        # taking it: it is junk inserted into the stream, not a real message spoiled, so a
        # client that drops it sees no gap.
        return orjson.loads(
            self._l2(channel, "snapshot", payload.get("bids"), payload.get("asks"), self._sequence)
        )

    # -- protocol --------------------------------------------------------------------------

    async def opened(self, client: Client) -> None:
        with trio.move_on_after(self.coinbase.subscribe_timeout):
            await self._subscribed.wait()
        if not self._subscribed.is_set():
            # (?) The close code is not documented.
            await client.close(1008, _SUBSCRIBE_TIMEOUT_REASON)

    async def received(self, client: Client, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            await client.send(_error(_BAD_REQUEST))
            return
        if not isinstance(request, dict) or request.get("type") not in (
            "subscribe",
            "unsubscribe",
        ):
            await client.send(_error(_BAD_REQUEST))
            return
        subscribing = request["type"] == "subscribe"
        channel = request.get("channel")
        products = request.get("product_ids", [])
        if not isinstance(products, list) or not all(isinstance(p, str) for p in products):
            await client.send(_error(_BAD_REQUEST))
            return
        if channel not in (LEVEL2, HEARTBEATS):
            await client.send(_error(_UNKNOWN_CHANNEL))
            return
        if subscribing:
            self.coinbase.subscribe_requests += 1
            if self.coinbase.rejecting_subscriptions:
                self.coinbase.subscriptions_rejected += 1
                await client.send(_error(_REJECTED))
                return
        if channel == HEARTBEATS:
            await self._heartbeats_request(client, subscribing)
            return
        symbols = [self.coinbase.listed_symbol(p) for p in products]
        if (subscribing and not products) or None in symbols:
            await client.send(_error(_UNKNOWN_PRODUCT))
            return
        if not subscribing:
            names = products or [c.name for c in self.channels()]
            for name in names:
                self.unsubscribe(name)
            await self._ack(client)
            return
        # The ack goes out before the snapshots: their loops start only after it is sent.
        self._subscribed.set()
        if not await self._ack(client, products):
            return
        for product, symbol in zip(products, symbols, strict=True):
            assert symbol is not None
            self.subscribe(client, Channel(product, symbol, self.coinbase.depth))

    async def _heartbeats_request(self, client: Client, subscribing: bool) -> None:
        if subscribing:
            self._subscribed.set()
            if self._heartbeats is None:
                scope = self._heartbeats = trio.CancelScope()

                async def run() -> None:
                    with scope:
                        await self._heartbeat_loop(client)

                if not await self._ack(client):
                    return
                client.start_soon(run)
                return
        elif self._heartbeats is not None:
            self._heartbeats.cancel()
            self._heartbeats = None
        await self._ack(client)

    async def _ack(self, client: Client, adding: Sequence[str] = ()) -> bool:
        """The subscriptions message: everything subscribed now, with `adding` (products
        whose snapshots follow the ack)."""
        current: dict[str, list[str]] = {}
        level2 = [channel.name for channel in self.channels()]
        level2 += [product for product in adding if product not in level2]
        if level2:
            current[LEVEL2] = level2
        if self._heartbeats is not None:
            current[HEARTBEATS] = [HEARTBEATS]
        events = [{"subscriptions": current}]
        return await client.send(self._message("subscriptions", events, self.next_sequence()))

    async def _heartbeat_loop(self, client: Client) -> None:
        while True:
            await trio.sleep(self.coinbase.heartbeat_interval)
            await self.coinbase.wait_unstalled()
            self._heartbeat_counter += 1
            now = time.time_ns()
            event = {
                "current_time": _heartbeat_time(now),
                "heartbeat_counter": self._heartbeat_counter,
            }
            if not await client.send(self._message(HEARTBEATS, [event], self.next_sequence())):
                return


class CoinbaseSimulator(DeltaVenue):
    """Coinbase Advanced Trade ``level2`` (with ``heartbeats``).

    ``depth``: levels per side of the book it keeps and snapshots (Coinbase sends the whole
    book; 1000 keeps a simulated one deep without costing much). ``updates_per_second``:
    average rate of book changes per product. ``heartbeat_interval``: seconds between
    heartbeats (1 s). ``subscribe_timeout``: seconds a connection may go without subscribing
    (5 s). ``products``: the product ids served (any ``BASE-QUOTE`` pair by default). No
    server pings by default (``ping_interval``).
    """

    name = "coinbase"
    supported_faults = ("gap", "duplicate", "reorder")

    def __init__(
        self,
        market: Market,
        *,
        seed: int | None = None,
        updates_per_second: float = 20.0,
        depth: int = 1000,
        heartbeat_interval: float = 1.0,
        subscribe_timeout: float = 5.0,
        products: Collection[str] | None = None,
        ping_interval: float | None = None,
        pong_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            market,
            seed=seed,
            depth=depth,
            updates_per_second=updates_per_second,
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
        )
        self.heartbeat_interval = heartbeat_interval
        self.subscribe_timeout = subscribe_timeout
        self.products = frozenset(products) if products is not None else None

    def listed_symbol(self, product: str) -> str | None:
        """The canonical symbol of a product id this venue lists, None for anything else."""
        symbol = parse_venue_pair(self.name, product)  # spelled as Coinbase does ("ETH-BTC")
        if symbol is None:
            return None
        if self.products is not None and product not in self.products:
            return None
        return symbol

    def open_session(self, path: str) -> Session | int:
        if urllib.parse.urlsplit(path).path not in ("", "/"):
            return 404
        return CoinbaseSession(self)
