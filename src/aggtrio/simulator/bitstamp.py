"""A local Bitstamp WebSocket v2 server: the ``order_book_<pair>`` channel.

Speaks what ``wss://ws.bitstamp.net`` does:

* Path ``/`` (any other path: HTTP 404).
* ``{"event": "bts:subscribe", "data": {"channel": "order_book_ethbtc"}}`` ->
  ``{"event": "bts:subscription_succeeded", "channel": …, "data": {}}``; ``bts:unsubscribe``
  -> ``bts:unsubscription_succeeded``; ``bts:heartbeat`` -> ``bts:heartbeat`` with
  ``{"status": "success"}``; anything else -> ``bts:error``.
* ``{"event": "data", "channel": …, "data": {"timestamp", "microtimestamp", "bids", "asks"}}``
  with the top 100 levels per side as strings, sent only when the book changed: a quiet
  (frozen or pinned) book is silent, as on the real venue.
* :meth:`BitstampSimulator.request_reconnect` sends ``bts:request_reconnect``.
* With ``reject_subscriptions()``, ``bts:subscribe`` gets ``bts:error``; with
  ``ignore_heartbeats()``, ``bts:heartbeat`` gets nothing.

The simulator sends the current book right after the subscription ack (the real venue
sends it at the next change, which on a liquid pair is within milliseconds); pass
``snapshot_on_subscribe=False`` for the strict behaviour. Only ``order_book_*`` channels
are served; other real channels get ``bts:error``.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from typing import Any

import orjson
import trio

from aggtrio.simulator.market import Market
from aggtrio.simulator.venue import Channel, Client, Rendered, Session, SimulatedVenue
from aggtrio.symbols import InvalidSymbolError, normalize_symbol

_CHANNEL = re.compile(r"^order_book_([a-z0-9]+)$")
_BAD_JSON = "Incorrect JSON format."
# (?) The exact text Bitstamp sends for an unknown channel is not documented.
_BAD_CHANNEL = "Bad subscription string."
# (?) Nor is the text for refusing a valid channel: same shape, a message saying why.
_REJECTED = "Subscription rejected."


def channel_name(symbol: str) -> str:
    """``channel_name("ETH/BTC") == "order_book_ethbtc"``."""
    return f"order_book_{normalize_symbol(symbol).lower()}"


def parse_channel(channel: str) -> str | None:
    """The canonical symbol of an ``order_book_<pair>`` channel, None for anything else."""
    match = _CHANNEL.match(channel)
    if match is None:
        return None
    try:
        return normalize_symbol(match.group(1))
    except InvalidSymbolError:
        return None


def _event(event: str, channel: str, data: object) -> str:
    return orjson.dumps({"event": event, "channel": channel, "data": data}).decode()


def _error(message: str) -> str:
    return _event("bts:error", "", {"code": None, "message": message})


class BitstampSession(Session):
    """One Bitstamp connection and its channel subscriptions."""

    def __init__(self, venue: BitstampSimulator) -> None:
        self.venue = venue
        self.subscriptions: dict[str, trio.CancelScope] = {}
        self._channels: dict[str, Channel] = {}

    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    def payload(self, channel: Channel, rendered: Rendered) -> dict[str, Any]:
        now_us = time.time_ns() // 1000
        return {
            "timestamp": str(now_us // 1_000_000),
            "microtimestamp": str(now_us),
            "bids": rendered.bids,
            "asks": rendered.asks,
        }

    def envelope(self, channel: Channel, payload: dict[str, Any]) -> object:
        return {"event": "data", "channel": channel.name, "data": payload}

    async def received(self, client: Client, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            await client.send(_error(_BAD_JSON))
            return
        if not isinstance(request, dict):
            await client.send(_error(_BAD_JSON))
            return
        event = request.get("event")
        if event == "bts:heartbeat":
            if self.venue.ignoring_heartbeats:
                self.venue.heartbeats_ignored += 1
                return
            await client.send(_event("bts:heartbeat", "", {"status": "success"}))
            return
        if event not in ("bts:subscribe", "bts:unsubscribe"):
            await client.send(_error(_BAD_JSON))
            return
        if event == "bts:subscribe":
            self.venue.subscribe_requests += 1
        data = request.get("data")
        channel = data.get("channel") if isinstance(data, dict) else None
        if not isinstance(channel, str):
            await client.send(_error(_BAD_JSON))
            return
        symbol = parse_channel(channel)
        if symbol is None:
            await client.send(_error(_BAD_CHANNEL))
            return
        if event == "bts:unsubscribe":
            scope = self.subscriptions.pop(channel, None)
            self._channels.pop(channel, None)
            if scope is not None:
                scope.cancel()
            await client.send(_event("bts:unsubscription_succeeded", channel, {}))
            return
        if self.venue.rejecting_subscriptions:
            self.venue.subscriptions_rejected += 1
            await client.send(_error(_REJECTED))
            return
        # The ack goes out before the channel task starts, so it always precedes the data.
        if not await client.send(_event("bts:subscription_succeeded", channel, {})):
            return
        if channel not in self.subscriptions:
            scope = self.subscriptions[channel] = trio.CancelScope()
            subscribed = self._channels[channel] = Channel(channel, symbol, self.venue.depth)

            async def run() -> None:
                with scope:
                    await self._channel_loop(client, subscribed)

            client.start_soon(run)

    async def _channel_loop(self, client: Client, channel: Channel) -> None:
        venue = self.venue
        state = venue.symbol_state(channel.symbol)
        if not venue.snapshot_on_subscribe:
            venue.render(state, venue.depth)  # create the book, so "changed" means a change
        last_version = -1 if venue.snapshot_on_subscribe else state.version
        while True:
            # Conflates: a slow client gets the newest book, never a backlog.
            changed = state.changed
            if state.version == last_version:
                await changed.wait()
                continue
            # Muted, the newest book goes out on unmute (if it changed meanwhile).
            await venue.wait_unmuted()
            rendered = venue.render(state, channel.depth)
            last_version = rendered.version
            if not await client.send_data(channel, rendered):
                return


class BitstampSimulator(SimulatedVenue):
    """Bitstamp ``order_book_<pair>`` channels.

    ``updates_per_second``: average rate of book changes per symbol (each change is one
    message per subscriber). ``depth``: levels per side sent (Bitstamp sends 100).
    ``reconnect_grace``: seconds after ``bts:request_reconnect`` before the server closes a
    connection the client has not left. No server pings by default (``ping_interval``).
    """

    name = "bitstamp"

    def __init__(
        self,
        market: Market,
        *,
        seed: int | None = None,
        updates_per_second: float = 20.0,
        depth: int = 100,
        snapshot_on_subscribe: bool = True,
        reconnect_grace: float = 3.0,
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
        self.snapshot_on_subscribe = snapshot_on_subscribe
        self.reconnect_grace = reconnect_grace

    def open_session(self, path: str) -> Session | int:
        if urllib.parse.urlsplit(path).path not in ("", "/"):
            return 404
        return BitstampSession(self)

    async def request_reconnect(self, grace: float | None = None) -> None:
        """Ask every connection to reconnect; close those still open after ``grace`` seconds
        (default ``reconnect_grace``)."""
        message = _event("bts:request_reconnect", "", "")
        await self.notify_and_close(
            lambda _client: message, self.reconnect_grace if grace is None else grace
        )
