"""A local Bybit v5 public spot WebSocket: the ``orderbook.{depth}.{symbol}`` topics.

Speaks what ``wss://stream.bybit.com/v5/public/spot`` does (Bybit v5 docs, "Connect" and
"Orderbook"; see :mod:`aggtrio.venues.bybit`):

* Path ``/v5/public/spot`` (any other path: HTTP 404).
* ``{"req_id": …, "op": "subscribe", "args": ["orderbook.50.ETHBTC", …]}`` (at most 10 args
  per request, as on spot) -> ``{"success": true, "ret_msg": "subscribe", "conn_id": …,
  "req_id": …, "op": "subscribe"}``, then a ``snapshot`` of each topic and a ``delta`` on
  every change; ``u`` starts anywhere and grows by exactly one per delta. ``unsubscribe``
  stops a topic; ``ping`` -> ``{"success": true, "ret_msg": "pong", …, "op": "ping"}``.
  Refusals are ``{"success": false, "ret_msg": …}`` replies to the request.
* Topics ``orderbook.{50,200,1000}.{SYMBOL}``, symbols upper case as Bybit lists them; each
  sends at most the venue's ``depth`` levels (its book is that deep). Numbers are printed
  as Bybit spot does: the pair's precision without trailing zeros (``"0.0354"``, ``"1"``).
* A connection that sends no ``ping`` for ``ping_timeout`` seconds is closed. (Bybit cuts a
  connection after 10 minutes with neither pings nor data; this simulator counts pings
  only, so a client that forgets to ping is caught even on a busy book.)
* :meth:`BybitSimulator.send_snapshot` re-sends a snapshot mid-stream (Bybit does so after a
  problem on its side), ``restart=True`` with ``u == 1`` as after a service restart.
* :meth:`~aggtrio.simulator.delta.DeltaVenue.inject`: ``gap``, ``duplicate``, ``reorder``,
  all visible in ``u``. Bybit sends no checksum, so no ``bad-checksum``.

Bybit public streams have no reconnect notice; :meth:`SimulatedVenue.close_connections`
and :meth:`SimulatedVenue.drop_connections` are its server-side disconnects.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

import orjson
import trio

from aggtrio.simulator.delta import DeltaSession, DeltaVenue, LevelChanges
from aggtrio.simulator.market import Market, SymbolSpec, trim_zeros
from aggtrio.simulator.venue import Channel, Client, Rendered, Session, TextLevels
from aggtrio.symbols import normalize_symbol, parse_venue_pair

PATH = "/v5/public/spot"
TOPIC_DEPTHS = (50, 200, 1000)
MAX_ARGS_PER_REQUEST = 10
_TOPIC = re.compile(r"^orderbook\.(\d+)\.([A-Za-z0-9]+)$")
# (?) Bybit documents the shape of refusals, not every text; these follow what clients
# have logged from the live venue ("Invalid symbol :[…]", "error:handler not found,…").
_BAD_REQUEST = "error:request format error"
_UNKNOWN_OP = "error:request type not found"
_TOO_MANY_ARGS = f"error:args length exceeds the limit of {MAX_ARGS_PER_REQUEST}"
_REJECTED = "error:subscription rejected"


def topic_name(symbol: str, depth: int = 50) -> str:
    """``topic_name("eth/btc") == "orderbook.50.ETHBTC"``."""
    return f"orderbook.{depth}.{normalize_symbol(symbol)}"


def _dumps(message: object) -> str:
    return orjson.dumps(message).decode()


class _RefusedError(Exception):
    """A request the venue answers with ``"success": false``."""


class BybitSession(DeltaSession):
    """One Bybit connection: its topics, their update ids, and the client's pings."""

    venue: BybitSimulator

    def __init__(self, venue: BybitSimulator) -> None:
        super().__init__(venue)
        self.conn_id = str(uuid.uuid4())
        # Per topic: the `u` of the last message sent, and the `u` its next snapshot takes
        # (1 after a "service restart"; otherwise it goes on from where it was).
        self._update_ids: dict[str, int] = {}
        self._restart: set[str] = set()
        self.last_ping = trio.current_time()

    async def opened(self, client: Client) -> None:
        client.start_soon(lambda: self._enforce_pings(client))

    async def _enforce_pings(self, client: Client) -> None:
        venue = self.venue
        while True:
            deadline = self.last_ping + venue.ping_timeout
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            if venue.stalled:
                # The client's pings are held up by our own stall: not its fault.
                await venue.wait_unstalled()
                self.last_ping = trio.current_time()
                continue
            venue.ping_timeouts += 1
            # (?) Bybit does not document how it cuts an idle connection: a clean close.
            await client.close(1000, "ping timeout")
            return

    # -- requests ------------------------------------------------------------------------

    async def received(self, client: Client, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            await client.send(self._reply(False, _BAD_REQUEST, "", None))
            return
        op, request_id = request.get("op"), request.get("req_id")
        try:
            if op == "ping":
                await self._ping(client, request_id)
            elif op == "subscribe":
                await self._subscribe(client, request.get("args"), request_id)
            elif op == "unsubscribe":
                self._unsubscribe(request.get("args"))
                await client.send(self._reply(True, "", "unsubscribe", request_id))
            else:
                raise _RefusedError(_UNKNOWN_OP)
        except _RefusedError as exc:
            await client.send(self._reply(False, str(exc), op, request_id))

    def _reply(self, success: bool, ret_msg: str, op: object, request_id: object) -> str:
        reply: dict[str, object] = {"success": success, "ret_msg": ret_msg}
        reply["conn_id"] = self.conn_id
        reply["req_id"] = request_id if isinstance(request_id, str) else ""
        reply["op"] = op if isinstance(op, str) else ""
        return _dumps(reply)

    async def _ping(self, client: Client, request_id: object) -> None:
        venue = self.venue
        self.last_ping = trio.current_time()
        if venue.ignoring_heartbeats:
            venue.heartbeats_ignored += 1
            return
        pong: dict[str, object] = {"success": True, "ret_msg": "pong", "conn_id": self.conn_id}
        if isinstance(request_id, str):
            pong["req_id"] = request_id
        pong["op"] = "ping"
        await client.send(_dumps(pong))

    async def _subscribe(self, client: Client, args: object, request_id: object) -> None:
        venue = self.venue
        venue.subscribe_requests += 1
        if not isinstance(args, list) or not args:
            raise _RefusedError(_BAD_REQUEST)
        if len(args) > MAX_ARGS_PER_REQUEST:
            raise _RefusedError(_TOO_MANY_ARGS)
        channels = [venue.parse_topic(topic) for topic in args]  # all or nothing
        for channel in channels:
            if channel.name in self._loops:
                raise _RefusedError(f"error:already subscribed,topic:{channel.name}")
        if venue.rejecting_subscriptions:
            venue.subscriptions_rejected += 1
            raise _RefusedError(_REJECTED)
        # The ack goes out before the topics' loops start, so it precedes their snapshots.
        if not await client.send(self._reply(True, "subscribe", "subscribe", request_id)):
            return
        for channel in channels:
            self.subscribe(client, channel)

    def _unsubscribe(self, args: object) -> None:
        if not isinstance(args, list) or not all(isinstance(topic, str) for topic in args):
            raise _RefusedError(_BAD_REQUEST)
        for topic in args:
            self.unsubscribe(topic)

    def restart_topics(self, client: Client, symbol: str | None, *, restart: bool) -> int:
        """Send a fresh snapshot on each topic (of `symbol`, if given); ``u`` starts again at
        1 if `restart`. Returns how many topics were restarted."""
        channels = [c for c in self.channels() if symbol in (None, c.symbol)]
        for channel in channels:
            if restart:
                self._restart.add(channel.name)
            self.subscribe(client, channel)
        return len(channels)

    # -- data ----------------------------------------------------------------------------

    def snapshot_message(self, channel: Channel, rendered: Rendered) -> str:
        if channel.name in self._restart:
            self._restart.discard(channel.name)
            update = 1
        else:
            # A new subscription starts where the venue's book is; a re-sent snapshot goes on.
            update = self._update_ids.get(channel.name, rendered.update_id) + 1
        self._update_ids[channel.name] = update
        return self._data(channel, "snapshot", rendered.bids, rendered.asks, update)

    def update_message(
        self, channel: Channel, changes: LevelChanges, rendered: Rendered, *, bad_checksum: bool
    ) -> str:
        update = self._update_ids[channel.name] + 1
        self._update_ids[channel.name] = update
        return self._data(channel, "delta", changes.bids, changes.asks, update)

    def unsubscribe(self, name: str) -> bool:
        self._update_ids.pop(name, None)
        return super().unsubscribe(name)

    def subscribe(self, client: Client, channel: Channel) -> None:
        update = self._update_ids.get(channel.name)
        super().subscribe(client, channel)  # unsubscribes first, which forgets `u`
        if update is not None:
            self._update_ids[channel.name] = update

    def _data(
        self, channel: Channel, kind: str, bids: TextLevels, asks: TextLevels, update: int
    ) -> str:
        now_ms = time.time_ns() // 1_000_000
        data = {"s": channel.symbol, "b": bids, "a": asks, "u": update, "seq": self.venue.seq()}
        return _dumps(
            {"topic": channel.name, "type": kind, "ts": now_ms, "data": data, "cts": now_ms}
        )

    def payload(self, channel: Channel, rendered: Rendered) -> dict[str, Any]:
        update = self._update_ids.get(channel.name, rendered.update_id)
        return {"bids": rendered.bids, "asks": rendered.asks, "u": update}

    def envelope(self, channel: Channel, payload: dict[str, Any]) -> object:
        # A snapshot-shaped message; spoiled values (and missing sides) pass through as is.
        data: dict[str, Any] = {"s": channel.symbol}
        if "bids" in payload:
            data["b"] = payload["bids"]
        if "asks" in payload:
            data["a"] = payload["asks"]
        data["u"] = payload.get("u", 1)
        data["seq"] = self.venue.seq()
        now_ms = time.time_ns() // 1_000_000
        return {
            "topic": channel.name,
            "type": "snapshot",
            "ts": now_ms,
            "data": data,
            "cts": now_ms,
        }


class BybitSimulator(DeltaVenue):
    """Bybit v5 public spot ``orderbook`` topics.

    ``updates_per_second``: average rate of book changes per symbol (Bybit pushes level 50
    at most every 20 ms). ``depth``: levels per side the venue's book holds, so the most a
    topic sends. ``ping_timeout``: seconds without a client ping before a connection is
    closed (Bybit: 10 minutes). ``listed``: the symbols the venue lists (default: any
    well-formed upper-case symbol); others are refused with ``Invalid symbol``.
    """

    name = "bybit"
    supported_faults: ClassVar[tuple[str, ...]] = ("gap", "duplicate", "reorder")

    def __init__(
        self,
        market: Market,
        *,
        seed: int | None = None,
        updates_per_second: float = 20.0,
        depth: int = 50,
        ping_timeout: float = 600.0,
        listed: Iterable[str] | None = None,
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
        if ping_timeout <= 0:
            raise ValueError("ping_timeout must be positive")
        self.ping_timeout = ping_timeout
        self.listed = None if listed is None else frozenset(map(normalize_symbol, listed))
        self.ping_timeouts = 0
        # Bybit's cross sequence: grows with every message, not by one.
        self._seq = self.fault_rng.randrange(1_000_000_000, 9_000_000_000)

    def seq(self) -> int:
        self._seq += self.fault_rng.randint(1, 40)
        return self._seq

    def open_session(self, path: str) -> Session | int:
        if urllib.parse.urlsplit(path).path != PATH:
            return 404
        return BybitSession(self)

    def parse_topic(self, topic: object) -> Channel:
        """The channel of a topic this venue serves; _RefusedError with Bybit's reason if not."""
        if not isinstance(topic, str):
            raise _RefusedError(_BAD_REQUEST)
        match = _TOPIC.match(topic)
        if match is None or int(match.group(1)) not in TOPIC_DEPTHS:
            raise _RefusedError(f"error:handler not found,topic:{topic}")
        pair = match.group(2)
        symbol = self._listed_symbol(pair)
        if symbol is None:
            raise _RefusedError(f"Invalid symbol :[{topic}]")
        return Channel(topic, symbol, min(int(match.group(1)), self.depth))

    def _listed_symbol(self, pair: str) -> str | None:
        symbol = parse_venue_pair(self.name, pair)  # spelled as Bybit does ("ETHBTC")
        if symbol is None:
            return None
        if self.listed is not None and symbol not in self.listed:
            return None
        return symbol

    def _format_levels(self, spec: SymbolSpec, levels: list[tuple[int, int]]) -> TextLevels:
        return tuple(
            (trim_zeros(price), trim_zeros(qty))
            for price, qty in super()._format_levels(spec, levels)
        )

    def send_snapshot(self, symbol: str | None = None, *, restart: bool = False) -> int:
        """Send a fresh snapshot on every open subscription (of `symbol`, if given), as Bybit
        does after a problem on its side; with `restart`, ``u`` starts again at 1 as after
        a service restart. Returns how many subscriptions got one."""
        wanted = normalize_symbol(symbol) if symbol is not None else None
        count = 0
        for client in self.open_clients():
            session = client.session
            if isinstance(session, BybitSession):
                count += session.restart_topics(client, wanted, restart=restart)
        return count
