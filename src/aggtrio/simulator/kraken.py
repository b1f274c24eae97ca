"""A local Kraken WebSocket v2 server: the ``book`` channel.

Speaks what ``wss://ws.kraken.com/v2`` does:

* Path ``/v2`` (any other path: HTTP 404). On connect, a ``status`` message
  (``{"channel": "status", "type": "update", "data": [{"system": "online", …}]}``).
* ``{"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/BTC"], "depth": 10,
  "snapshot": true}, "req_id": 1}`` -> one ack per pair (``{"method": "subscribe", "result":
  {"channel": "book", "depth": 10, "snapshot": true, "symbol": "ETH/BTC"}, "success": true,
  "time_in": …, "time_out": …, "req_id": 1}``), then a snapshot and updates; a pair that
  cannot be traded, a bad depth or a malformed request gets ``"success": false`` with an
  ``error``. ``unsubscribe`` likewise. ``{"method": "ping"}`` -> ``{"method": "pong", …}``.
* ``{"channel": "heartbeat"}`` every second while the connection has a subscription.
* Book messages ``{"channel": "book", "type": "snapshot"|"update", "data": [{"symbol",
  "bids": [{"price": 0.03512300, "qty": 1.50000000}], "asks", "checksum", "timestamp"}]}``:
  numbers printed with the pair's decimals, trailing zeros kept, as JSON numbers (written by
  hand: orjson cannot print ``0.05000``); ``trim_zeros=True`` prints them as Kraken's own
  examples do (``0.566`` for ``0.5660``) while the checksum still uses the full precision.
  Updates carry only changed levels (qty ``0`` deletes) and, as on Kraken, no delete for a
  level pushed out of the subscribed depth: the client must cut its book to that depth.
  The checksum is Kraken's CRC32 over the top 10 levels per side.
* :meth:`KrakenSimulator.send_status` sends a status update; :meth:`announce_maintenance`
  sends ``"system": "maintenance"`` and closes the connections shortly after.
* Faults (:meth:`DeltaVenue.inject`): gap, duplicate, reorder, bad-checksum. Kraken has no
  sequence numbers, so a client sees a gap or reorder only through the checksum; a
  duplicated update re-sets the same absolute quantities and changes nothing.
* ``client_ping_timeout`` (off by default: Kraken does not require client pings) closes a
  connection that sent no ping for that long.

(?) The exact error texts are not documented; they follow the shape of Kraken's examples.
Not simulated: other channels, ``snapshot: false``, rate limits.
"""

from __future__ import annotations

import datetime
import math
import urllib.parse
import zlib
from typing import Any

import orjson
import trio

from aggtrio.simulator.delta import DELETED, DeltaSession, DeltaVenue, LevelChanges
from aggtrio.simulator.market import Market, trim_zeros
from aggtrio.simulator.venue import Channel, Client, Rendered, Session, TextLevels
from aggtrio.symbols import parse_venue_pair, venue_pair

DEPTHS = (10, 25, 100, 500, 1000)
CHECKSUM_LEVELS = 10
HEARTBEAT = '{"channel":"heartbeat"}'
API_VERSION = "2.0.10"  # (?) whatever Kraken's status message reports at the time
_UNSUPPORTED_PAIR = "Currency pair not supported"
_REJECTED = "Subscription rejected"  # (?) reject_subscriptions(): Kraken's text is not documented
_NOT_SUBSCRIBED = "Subscription Not Found"


def kraken_pair(symbol: str) -> str:
    """``kraken_pair("ethbtc") == "ETH/BTC"``."""
    return venue_pair("kraken", symbol)


def parse_pair(pair: object) -> str | None:
    """The canonical symbol of a pair spelled as Kraken does (``ETH/BTC``), else None."""
    return parse_venue_pair("kraken", pair)


def _digits(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def checksum(bids: TextLevels, asks: TextLevels) -> int:
    """Kraken's book checksum of full-precision texts: CRC32 over the top 10 asks (low to
    high), then bids (high to low), each price then qty without ``.`` or leading zeros."""
    text = "".join(
        _digits(price) + _digits(qty)
        for side in (asks, bids)
        for price, qty in side[:CHECKSUM_LEVELS]
    )
    return zlib.crc32(text.encode())


def _now() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def _dumps(message: object) -> str:
    return orjson.dumps(message).decode()


def _response(
    method: str | None,
    request_id: object,
    *,
    result: object = None,
    error: str | None = None,
    symbol: str | None = None,
) -> str:
    """A reply to a request, as Kraken shapes it (``success``, ``time_in``, ``time_out``)."""
    now = _now()
    reply: dict[str, Any] = {} if method is None else {"method": method}
    if error is None:
        reply["result"] = result
        reply["success"] = True
    else:
        reply["error"] = error
        reply["success"] = False
        if symbol is not None:
            reply["symbol"] = symbol
    reply["time_in"] = now
    reply["time_out"] = now
    if request_id is not None:
        reply["req_id"] = request_id
    return _dumps(reply)


def _status(system: str, connection_id: int) -> str:
    entry = {
        "version": API_VERSION,
        "system": system,
        "api_version": "v2",
        "connection_id": connection_id,
    }
    return _dumps({"channel": "status", "type": "update", "data": [entry]})


def _number(value: object) -> object:
    """A wire text as a JSON number for a malformed message; anything unparseable as is."""
    if isinstance(value, str):
        try:
            return float(value)  # NaN and infinities print as null: not numbers either
        except ValueError:
            return value
    return value


def _objects(side: object) -> object:
    """``[[price, qty], …]`` as Kraken's ``[{"price": …, "qty": …}, …]``; other values as is."""
    if not isinstance(side, list):
        return side
    return [
        {"price": _number(level[0]), "qty": _number(level[1])}
        if isinstance(level, list) and len(level) >= 2
        else level
        for level in side
    ]


class KrakenSession(DeltaSession):
    """One Kraken v2 connection and its book subscriptions."""

    venue: KrakenSimulator

    def __init__(self, venue: KrakenSimulator, connection_id: int) -> None:
        super().__init__(venue)
        self.connection_id = connection_id
        self.last_ping = trio.current_time()

    async def opened(self, client: Client) -> None:
        if not await client.send(_status("online", self.connection_id)):
            return
        client.start_soon(lambda: self._heartbeats(client))
        timeout = self.venue.client_ping_timeout
        if timeout is not None:
            client.start_soon(lambda: self._enforce_pings(client, timeout))

    async def _heartbeats(self, client: Client) -> None:
        while True:
            await trio.sleep(self.venue.heartbeat_interval)
            if self.channels() and not await client.send(HEARTBEAT):
                return

    async def _enforce_pings(self, client: Client, limit: float) -> None:
        while True:
            await trio.sleep_until(self.last_ping + limit)
            if trio.current_time() >= self.last_ping + limit:
                await client.close(1008, "no ping")
                return

    # -- messages out ----------------------------------------------------------------------

    def _text(self, text: str) -> str:
        return trim_zeros(text) if self.venue.trim_zeros else text

    def _side(self, levels: TextLevels) -> str:
        text = self._text
        return "[" + ",".join(f'{{"price":{text(p)},"qty":{text(q)}}}' for p, q in levels) + "]"

    def _book_message(
        self, kind: str, channel: Channel, bids: TextLevels, asks: TextLevels, crc: int
    ) -> str:
        return (
            f'{{"channel":"book","type":"{kind}","data":[{{"symbol":{_dumps(channel.name)},'
            f'"bids":{self._side(bids)},"asks":{self._side(asks)},"checksum":{crc},'
            f'"timestamp":"{_now()}"}}]}}'
        )

    def snapshot_message(self, channel: Channel, rendered: Rendered) -> str:
        crc = checksum(rendered.bids, rendered.asks)
        return self._book_message("snapshot", channel, rendered.bids, rendered.asks, crc)

    def update_message(
        self, channel: Channel, changes: LevelChanges, rendered: Rendered, *, bad_checksum: bool
    ) -> str:
        crc = checksum(rendered.bids, rendered.asks)
        if bad_checksum:
            crc ^= 1
        bids = _in_scope(changes.bids, rendered.bids, channel.depth, descending=True)
        asks = _in_scope(changes.asks, rendered.asks, channel.depth, descending=False)
        return self._book_message("update", channel, bids, asks, crc)

    def payload(self, channel: Channel, rendered: Rendered) -> dict[str, Any]:
        return {"bids": rendered.bids, "asks": rendered.asks}

    def envelope(self, channel: Channel, payload: dict[str, Any]) -> object:
        try:
            crc = checksum(payload["bids"], payload["asks"])
        except (KeyError, TypeError, ValueError, AttributeError):
            crc = 0  # a spoiled book has no meaningful checksum
        entry: dict[str, Any] = {"symbol": channel.name}
        for side in ("bids", "asks"):
            if side in payload:
                entry[side] = _objects(payload[side])
        entry["checksum"] = crc
        entry["timestamp"] = _now()
        return {"channel": "book", "type": "snapshot", "data": [entry]}

    # -- messages in -----------------------------------------------------------------------

    async def received(self, client: Client, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            await client.send(_response(None, None, error="Malformed request"))
            return
        if not isinstance(request, dict):
            await client.send(_response(None, None, error="Malformed request"))
            return
        method = request.get("method")
        request_id = request.get("req_id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            request_id = None
        if method == "ping":
            self.last_ping = trio.current_time()
            if self.venue.ignoring_heartbeats:
                self.venue.heartbeats_ignored += 1
                return
            await client.send(_pong(request_id))
            return
        if method not in ("subscribe", "unsubscribe"):
            await client.send(_response(str(method)[:40], request_id, error="Method not supported"))
            return
        if method == "subscribe":
            self.venue.subscribe_requests += 1
        params = request.get("params")
        error, pairs, depth = _book_params(params, subscribing=method == "subscribe")
        if error is not None:
            await client.send(_response(method, request_id, error=error))
            return
        for pair in pairs:
            if method == "subscribe":
                sent = await self._subscribe(client, pair, depth, request_id)
            else:
                sent = await self._unsubscribe(client, pair, request_id)
            if not sent:
                return

    async def _subscribe(self, client: Client, pair: str, depth: int, request_id: object) -> bool:
        symbol = parse_pair(pair)
        if symbol is None:
            return await client.send(
                _response("subscribe", request_id, error=_UNSUPPORTED_PAIR, symbol=pair)
            )
        if self.venue.rejecting_subscriptions:
            self.venue.subscriptions_rejected += 1
            return await client.send(
                _response("subscribe", request_id, error=_REJECTED, symbol=pair)
            )
        result = {"channel": "book", "depth": depth, "snapshot": True, "symbol": pair}
        # The ack goes out before the channel task starts, so it always precedes the snapshot.
        if not await client.send(_response("subscribe", request_id, result=result)):
            return False
        self.subscribe(client, Channel(pair, symbol, depth))
        return True

    async def _unsubscribe(self, client: Client, pair: str, request_id: object) -> bool:
        channel = next((c for c in self.channels() if c.name == pair), None)
        if channel is None:
            return await client.send(
                _response("unsubscribe", request_id, error=_NOT_SUBSCRIBED, symbol=pair)
            )
        self.unsubscribe(pair)
        result = {"channel": "book", "depth": channel.depth, "symbol": pair}
        return await client.send(_response("unsubscribe", request_id, result=result))


def _pong(request_id: object) -> str:
    now = _now()
    reply: dict[str, Any] = {"method": "pong"}
    if request_id is not None:
        reply["req_id"] = request_id
    reply["time_in"] = now
    reply["time_out"] = now
    return _dumps(reply)


def _book_params(params: object, *, subscribing: bool) -> tuple[str | None, list[str], int]:
    """(error, pairs, depth) of a book (un)subscribe request's ``params``."""
    if not isinstance(params, dict):
        return "Malformed request", [], 0
    if params.get("channel") != "book":
        return "Channel not supported", [], 0  # (?) only the book channel is simulated
    pairs = params.get("symbol")
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, str) for p in pairs):
        return "Field 'symbol' must be a non-empty list of strings", [], 0
    depth = params.get("depth", 10)
    if depth not in DEPTHS or isinstance(depth, bool):
        return f"Invalid depth: must be one of {', '.join(map(str, DEPTHS))}", [], 0
    if subscribing and params.get("snapshot", True) is not True:
        return "snapshot: false is not simulated", [], 0
    return None, list(pairs), depth


def _in_scope(
    changes: TextLevels, rendered: TextLevels, depth: int, *, descending: bool
) -> TextLevels:
    """The changes minus deletions of levels that only fell out of the subscribed depth:
    Kraken sends none for those (the client cuts its book to the depth itself)."""
    if len(rendered) < depth:
        return changes
    worst = float(rendered[-1][0])
    return tuple(
        (price, qty)
        for price, qty in changes
        if qty != DELETED or ((float(price) > worst) if descending else (float(price) < worst))
    )


class KrakenSimulator(DeltaVenue):
    """Kraken v2 ``book`` subscriptions around the shared market.

    ``depth``: levels per side the venue's book holds (deeper subscriptions get that many).
    ``heartbeat_interval``: seconds between heartbeats (Kraken: about 1).
    ``maintenance_grace``: seconds between the maintenance notice and closing connections.
    """

    name = "kraken"
    supported_faults = ("gap", "duplicate", "reorder", "bad-checksum")

    def __init__(
        self,
        market: Market,
        *,
        seed: int | None = None,
        updates_per_second: float = 20.0,
        depth: int = 100,
        heartbeat_interval: float = 1.0,
        trim_zeros: bool = False,
        client_ping_timeout: float | None = None,
        maintenance_grace: float = 1.0,
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
        if not (heartbeat_interval > 0 and math.isfinite(heartbeat_interval)):
            raise ValueError("heartbeat_interval must be a positive number of seconds")
        self.heartbeat_interval = heartbeat_interval
        self.trim_zeros = trim_zeros
        self.client_ping_timeout = client_ping_timeout
        self.maintenance_grace = maintenance_grace
        self._connection_ids = 0

    def open_session(self, path: str) -> Session | int:
        if urllib.parse.urlsplit(path).path != "/v2":
            return 404
        self._connection_ids += 1
        return KrakenSession(self, self._connection_ids)

    async def send_status(self, system: str) -> None:
        """Send every open connection a status update saying ``system`` (``online``,
        ``maintenance``, ``cancel_only``, ``post_only``)."""
        jobs = []
        for client in self.open_clients():
            session = client.session
            if isinstance(session, KrakenSession):
                message = _status(system, session.connection_id)
                jobs.append((client, lambda c=client, m=message: c.send(m)))
        await self._on_each(jobs, self.close_timeout)

    async def announce_maintenance(self, grace: float | None = None) -> None:
        """Status ``maintenance`` to every connection, then close them after ``grace``
        seconds (default ``maintenance_grace``); new connections are served as usual."""

        def message(client: Client) -> str:
            session = client.session
            connection_id = session.connection_id if isinstance(session, KrakenSession) else 0
            return _status("maintenance", connection_id)

        await self.notify_and_close(message, self.maintenance_grace if grace is None else grace)
