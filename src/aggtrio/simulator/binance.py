"""A local Binance spot market-data WebSocket: partial book depth streams.

Speaks what ``wss://stream.binance.com:9443`` does for ``<symbol>@depth<N>[@100ms]``:

* ``/stream?streams=a/b`` (combined: ``{"stream": …, "data": …}``) and ``/stream``;
  ``/ws/<stream>`` and ``/ws`` (raw: the bare payload). Any other path: HTTP 404; a stream
  name the simulator does not serve in the URL: HTTP 400.
* Live ``SUBSCRIBE`` / ``UNSUBSCRIBE`` / ``LIST_SUBSCRIPTIONS`` / ``SET_PROPERTY`` /
  ``GET_PROPERTY`` (property ``combined``), answered ``{"result": …, "id": …}`` or with
  ``{"error": {"code": …, "msg": …}, "id": …}`` using the codes Binance documents.
* Every 100 ms (1000 ms without the ``@100ms`` suffix) per stream, the top N levels as
  ``{"lastUpdateId": N, "bids": [["0.03512300", "1.23400000"], …], "asks": […]}``,
  changed or not; ``lastUpdateId`` grows with every book change.
* A ping frame every 20 s; no pong within a minute closes the connection.
* :meth:`BinanceSimulator.request_shutdown` announces maintenance with
  ``serverShutdown`` and closes the connections shortly after.
* ``max_connection_age`` (real venue: 24 h, off by default) closes each connection that
  old, with no notice (Binance documents none).
* With ``reject_subscriptions()``: a live ``SUBSCRIBE`` gets an error reply, and a
  handshake naming streams in its URL gets HTTP 400, as a bad stream name does.

Not simulated: the 5 messages/s and 1024 streams per connection limits, diff-depth and all
non-depth streams.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from typing import Any

import attrs
import orjson
import trio

from aggtrio.simulator.market import Market, SymbolSpec
from aggtrio.simulator.venue import Channel, Client, Rendered, Session, SimulatedVenue
from aggtrio.symbols import InvalidSymbolError, normalize_symbol

_STREAM = re.compile(r"^([a-z0-9]+)@depth(5|10|20)(?:@(100|1000)ms)?$")
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
_MAX_ID_LENGTH = 36


@attrs.frozen(slots=True)
class DepthStream:
    """A parsed partial-book stream name such as ``ethbtc@depth20@100ms``."""

    name: str
    symbol: str  # canonical, e.g. "ETHBTC"
    levels: int
    fast: bool  # 100 ms updates; otherwise 1000 ms


def parse_stream(name: str) -> DepthStream | None:
    """Parse a partial-book stream name; None for anything else (upper case included)."""
    match = _STREAM.match(name)
    if match is None:
        return None
    try:
        symbol = normalize_symbol(match.group(1))
    except InvalidSymbolError:
        return None
    return DepthStream(name, symbol, int(match.group(2)), match.group(3) == "100")


def stream_name(symbol: str, levels: int = 20, *, fast: bool = True) -> str:
    """The stream name for a symbol in any spelling: ``stream_name("ETH/BTC")`` ->
    ``"ethbtc@depth20@100ms"``."""
    suffix = "@100ms" if fast else ""
    return f"{normalize_symbol(symbol).lower()}@depth{levels}{suffix}"


class _RequestError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _error(code: int, msg: str, request_id: object) -> str:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": request_id}).decode()


def _result(result: object, request_id: object) -> str:
    return orjson.dumps({"result": result, "id": request_id}).decode()


class BinanceSession(Session):
    """One Binance connection: its subscriptions and whether it wraps messages."""

    def __init__(self, venue: BinanceSimulator, *, combined: bool, streams: list[DepthStream]):
        self.venue = venue
        self.combined = combined
        self._initial = streams
        # Insertion-ordered, so LIST_SUBSCRIPTIONS answers in subscription order.
        self.subscriptions: dict[str, trio.CancelScope] = {}
        self.streams: dict[str, DepthStream] = {}

    async def opened(self, client: Client) -> None:
        if self._initial:
            self.venue.subscribe_requests += 1
        for stream in self._initial:
            self._subscribe(client, stream)

    def _subscribe(self, client: Client, stream: DepthStream) -> None:
        if stream.name in self.subscriptions:
            return
        scope = self.subscriptions[stream.name] = trio.CancelScope()
        self.streams[stream.name] = stream

        async def run() -> None:
            with scope:
                await self._stream_loop(client, stream)

        client.start_soon(run)

    def _unsubscribe(self, name: str) -> None:
        scope = self.subscriptions.pop(name, None)
        self.streams.pop(name, None)
        if scope is not None:
            scope.cancel()

    def channels(self) -> list[Channel]:
        return [_channel(stream) for stream in self.streams.values()]

    def payload(self, channel: Channel, rendered: Rendered) -> dict[str, Any]:
        return {"lastUpdateId": rendered.update_id, "bids": rendered.bids, "asks": rendered.asks}

    def envelope(self, channel: Channel, payload: dict[str, Any]) -> object:
        return {"stream": channel.name, "data": payload} if self.combined else payload

    async def _stream_loop(self, client: Client, stream: DepthStream) -> None:
        venue = self.venue
        channel = _channel(stream)
        period = venue.interval if stream.fast else venue.slow_interval
        state = venue.symbol_state(stream.symbol)
        deadline = trio.current_time()
        while True:
            # Fixed cadence like the real stream; a slow client skips ticks, never queues.
            # A frozen market still ticks (the same book again); a muted venue does not.
            deadline = max(deadline + period, trio.current_time())
            await trio.sleep_until(deadline)
            await venue.wait_unmuted()
            rendered = venue.render(state, stream.levels)
            if not await client.send_data(channel, rendered):
                return

    async def received(self, client: Client, message: str | bytes) -> None:
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            await client.send(
                _error(3, f"Invalid JSON: expected value at line 1 column {exc.colno}", None)
            )
            return
        request_id: object = None
        try:
            if not isinstance(request, dict):
                raise _RequestError(
                    2, "Invalid request: invalid type: expected struct Request at line 1 column 1"
                )
            request_id = _request_id(request.get("id"))
            reply = self._handle(client, request)
        except _RequestError as exc:
            await client.send(_error(exc.code, exc.msg, request_id))
            return
        await client.send(_result(reply, request_id))

    def _handle(self, client: Client, request: dict[str, Any]) -> object:
        method = request.get("method")
        if method is None:
            raise _RequestError(2, "Invalid request: missing field `method` at line 1 column 1")
        if not isinstance(method, str) or method not in (
            "SUBSCRIBE",
            "UNSUBSCRIBE",
            "LIST_SUBSCRIPTIONS",
            "SET_PROPERTY",
            "GET_PROPERTY",
        ):
            raise _RequestError(
                2,
                f"Invalid request: unknown variant `{method}`, expected one of {_METHODS}"
                " at line 1 column 1",
            )
        params = request.get("params", [])
        if not isinstance(params, list):
            raise _RequestError(2, "Invalid request: params must be an array")

        if method == "SUBSCRIBE":
            self.venue.subscribe_requests += 1
            streams = [_parse_param(name) for name in params]
            if self.venue.rejecting_subscriptions:
                self.venue.subscriptions_rejected += 1
                # (?) The text Binance sends when it refuses a valid stream is not
                # documented; the shape and code are those of its other request errors.
                raise _RequestError(2, "Invalid request: subscription rejected")
            for stream in streams:
                self._subscribe(client, stream)
            return None
        if method == "UNSUBSCRIBE":
            for name in params:
                if not isinstance(name, str):
                    raise _RequestError(2, "Invalid request: stream names must be strings")
                self._unsubscribe(name)
            return None
        if method == "LIST_SUBSCRIPTIONS":
            return list(self.subscriptions)
        if method == "SET_PROPERTY":
            if len(params) != 2:
                raise _RequestError(2, "Invalid request: too many parameters")
            if params[0] != "combined":
                raise _RequestError(0, "Unknown property")
            if not isinstance(params[1], bool):
                raise _RequestError(1, "Invalid value type: expected Boolean")
            self.combined = params[1]
            return None
        # GET_PROPERTY
        if len(params) != 1:
            raise _RequestError(2, "Invalid request: too many parameters")
        if params[0] != "combined":
            raise _RequestError(0, "Unknown property")
        return self.combined


def _channel(stream: DepthStream) -> Channel:
    return Channel(stream.name, stream.symbol, stream.levels)


def _request_id(value: object) -> object:
    # Binance takes an unsigned integer, a short string or null as the request id.
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if isinstance(value, str) and len(value) <= _MAX_ID_LENGTH:
        return value
    raise _RequestError(2, "Invalid request: request ID must be an unsigned integer")


def _parse_param(name: object) -> DepthStream:
    if not isinstance(name, str):
        raise _RequestError(2, "Invalid request: stream names must be strings")
    stream = parse_stream(name)
    if stream is None:
        # Binance itself accepts unknown names silently; the simulator only serves partial
        # depth streams and says so, which catches typos in adapters early.
        raise _RequestError(2, f"Invalid request: unsupported stream name `{name}`")
    return stream


class BinanceSimulator(SimulatedVenue):
    """Binance spot partial-book streams (``<sym>@depth{5,10,20}[@100ms]``).

    ``interval``/``slow_interval``: seconds between messages of ``@100ms`` streams and of
    streams without it. ``depth``: levels the venue's book holds per side (a ``depth20``
    stream sends ``min(20, depth)``). ``updates_per_second``: average rate of book changes.
    ``shutdown_grace``: seconds between ``serverShutdown`` and closing the connection.
    ``max_connection_age``: seconds after which a connection is closed (real venue: 24 h).
    """

    name = "binance"

    def __init__(
        self,
        market: Market,
        *,
        seed: int | None = None,
        interval: float = 0.1,
        depth: int = 20,
        slow_interval: float = 1.0,
        updates_per_second: float = 10.0,
        ping_interval: float | None = 20.0,
        pong_timeout: float = 60.0,
        shutdown_grace: float = 1.0,
        max_connection_age: float | None = None,
    ) -> None:
        if interval <= 0 or slow_interval <= 0:
            raise ValueError("intervals must be positive")
        if max_connection_age is not None and not max_connection_age > 0:
            raise ValueError("max_connection_age must be positive")
        super().__init__(
            market,
            seed=seed,
            depth=depth,
            updates_per_second=updates_per_second,
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
            max_connection_age=max_connection_age,
        )
        self.interval = interval
        self.slow_interval = slow_interval
        self.shutdown_grace = shutdown_grace

    def price_decimals(self, spec: SymbolSpec) -> int:
        return 8  # Binance prints every price and quantity with 8 decimals

    def open_session(self, path: str) -> Session | int:
        parts = urllib.parse.urlsplit(path)
        if parts.path == "/stream":
            query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
            names = "/".join(query.get("streams", [])).split("/")
            combined = True
        elif parts.path == "/ws":
            names, combined = [], False
        elif parts.path.startswith("/ws/"):
            names = urllib.parse.unquote(parts.path[len("/ws/") :]).split("/")
            combined = False
        else:
            return 404
        streams: list[DepthStream] = []
        for name in filter(None, names):
            stream = parse_stream(name)
            if stream is None:
                return 400
            if stream not in streams:
                streams.append(stream)
        if streams and self.rejecting_subscriptions:
            self.subscriptions_rejected += 1
            return 400
        return BinanceSession(self, combined=combined, streams=streams)

    async def request_shutdown(self, grace: float | None = None) -> None:
        """Announce maintenance on every connection, then close them after ``grace``
        seconds (default ``shutdown_grace``) unless the client left first."""
        event = {"e": "serverShutdown", "E": time.time_ns() // 1_000_000}

        def message(client: Client) -> str:
            combined = False
            session = client.session
            if isinstance(session, BinanceSession):
                combined = session.combined
            body = {"stream": "!serverShutdown", "data": event} if combined else event
            return orjson.dumps(body).decode()

        await self.notify_and_close(message, self.shutdown_grace if grace is None else grace)
