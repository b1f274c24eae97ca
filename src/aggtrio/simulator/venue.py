"""The machinery every simulated venue shares: listen, accept, track, kill and restart.

A :class:`SimulatedVenue` owns a listening socket and one task group per client
connection. The WebSocket handshake and framing come from trio-websocket's server side
(:func:`trio_websocket.wrap_server_stream`); the venue keeps the raw TCP stream of every
connection so :meth:`SimulatedVenue.kill` can reset it without a close frame, the way a
crashed exchange or a dropped network looks to the client.

Each subclass supplies a :class:`Session` per connection (the venue's protocol) and the
formatting of its numbers. The base class keeps each symbol's book for this venue (moved by
the shared :class:`~aggtrio.simulator.market.Market`, or pinned by a test) and records what
was last sent, so tests can compare the service's output against it.

It also injects the faults a feed must survive (see :class:`SimulatedVenue`, "faults"):
dropped or cleanly closed connections, a stalled or muted venue, unanswered heartbeats,
refused connections, rejected subscriptions and malformed messages. Every data message
goes through :meth:`Client.send_data`, so mute, garbage and drop-after-N apply to every
venue alike; each venue only says how its data message looks (:class:`Session`).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from aggtrio.model import PriceLevel
from aggtrio.simulator.market import Market, MovingBook, SymbolSpec, format_units
from aggtrio.symbols import normalize_symbol

logger = logging.getLogger(__name__)

# One side of a book as it goes on the wire: (price, amount) decimal strings, best first.
TextLevels = tuple[tuple[str, str], ...]

# Client messages are small; a few queued ones keep trio-websocket's reader (which also
# answers pings and close frames) from stalling behind a busy handler.
_MESSAGE_QUEUE_SIZE = 16
_WIRE_DECIMALS = 8

MALFORMED_KINDS = (
    "invalid-json",
    "binary-garbage",
    "wrong-types",
    "non-numeric",
    "negative",
    "nan",
    "missing-fields",
    "empty-book",
    "one-sided",
    "crossed",
    "huge",
)
"""What :meth:`SimulatedVenue.send_malformed` can send; every venue implements all of them."""

# garbage_rate() draws from these: an 8 MiB message per data tick would only measure memory.
GARBAGE_KINDS = tuple(kind for kind in MALFORMED_KINDS if kind != "huge")

# Twice the client's 4 MiB limit: a "huge" message must be refused by size, not parsed.
HUGE_MESSAGE_BYTES = 8 * 1024 * 1024


@attrs.frozen(slots=True)
class SimBook:
    """A book as a venue sent it: floats parsed from the sent strings, best level first."""

    bids: tuple[PriceLevel, ...]
    asks: tuple[PriceLevel, ...]


@attrs.frozen(slots=True)
class Rendered:
    """One symbol's book at one version, formatted for the wire at one depth."""

    version: int
    update_id: int
    bids: TextLevels
    asks: TextLevels
    book: SimBook


@attrs.frozen(slots=True)
class Channel:
    """One data subscription of a connection: a Binance stream or a Bitstamp channel."""

    name: str  # as on the wire, e.g. "ethbtc@depth20@100ms" or "order_book_ethbtc"
    symbol: str  # canonical, e.g. "ETHBTC"
    depth: int  # levels per side the channel sends


class _Gate:
    """Open unless the venue is stalled; everything that would touch a socket waits here."""

    def __init__(self) -> None:
        self._opened = trio.Event()
        self._opened.set()

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    def close(self) -> None:
        if self._opened.is_set():
            self._opened = trio.Event()

    def open(self) -> None:
        self._opened.set()

    async def wait_open(self) -> None:
        while not self._opened.is_set():
            await self._opened.wait()


class GatedStream(trio.abc.HalfCloseableStream):
    """A TCP stream that neither sends nor hands on received bytes while the gate is shut.

    trio-websocket sits on top of it, so a stalled venue answers nothing, pings and close
    frames included, while the socket stays open (the kernel still ACKs, as for a hung
    process). Received bytes are held back *after* the read too: the reader is nearly always
    already waiting inside ``receive_some`` when a stall begins. Closing is never gated, so
    kill() and drop_connections() still reset a stalled connection.
    """

    def __init__(self, stream: trio.SocketStream, gate: _Gate) -> None:
        self.stream = stream
        self._gate = gate

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._gate.wait_open()
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._gate.wait_open()
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._gate.wait_open()
        data = await self.stream.receive_some(max_bytes)
        await self._gate.wait_open()
        return data

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


def _to_floats(levels: TextLevels) -> tuple[PriceLevel, ...]:
    return tuple((float(price), float(qty)) for price, qty in levels)


def _pinned_text(value: str | float) -> str:
    """A pinned price or amount as wire text: strings verbatim, numbers with 8 decimals."""
    if isinstance(value, str):
        number = float(value)  # ValueError for text that no client could parse either
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        value = f"{number:.{_WIRE_DECIMALS}f}"
    else:
        raise TypeError(f"a price or amount must be a str or a number, not {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return value


Envelope = Callable[[dict[str, Any]], object]


def malform(
    kind: str, payload: dict[str, Any], envelope: Envelope, rng: random.Random
) -> str | bytes:
    """A venue's data message (``envelope(payload)``) with one defect of ``kind``.

    ``payload`` is the part carrying ``bids`` and ``asks`` (Binance's partial book, Bitstamp's
    ``data``); it is copied, never changed. Text for every kind but ``binary-garbage``.
    """
    book = dict(payload)
    bids = [list(level) for level in book["bids"]]
    asks = [list(level) for level in book["asks"]]
    book["bids"], book["asks"] = bids, asks
    if kind == "invalid-json":
        text = _dumps(envelope(book))
        return text[: len(text) // 2]  # cut inside the outer object: never valid JSON
    if kind == "binary-garbage":
        # A leading 0xFF is never valid UTF-8, so the bytes can never parse as JSON.
        return b"\xff" + rng.randbytes(rng.randint(15, 255))
    if kind == "wrong-types":
        book["bids"] = {level[0]: level[1] for level in bids}  # an object, not levels
        book["asks"] = [[float(p), float(q)] for p, q in asks] or [[1.0, 1.0]]  # numbers
    elif kind == "non-numeric":
        _best(bids)[0] = "abc"
    elif kind == "negative":
        _best(bids)[0] = "-" + _best(bids)[0]  # a negative price
        _best(asks)[1] = "-" + _best(asks)[1]  # and a negative amount
    elif kind == "nan":
        _best(bids)[0] = "NaN"
        _best(asks)[1] = "Infinity"
    elif kind == "missing-fields":
        del book["asks"]
    elif kind == "empty-book":
        book["bids"], book["asks"] = [], []
    elif kind == "one-sided":
        book["asks"] = []
    elif kind == "crossed":
        _cross(bids, asks)
    elif kind == "huge":
        return _huge(book, asks, envelope)
    else:
        raise ValueError(f"unknown malformed kind {kind!r} (known: {', '.join(MALFORMED_KINDS)})")
    return _dumps(envelope(book))


def _huge(book: dict[str, Any], asks: list[list[Any]], envelope: Envelope) -> str:
    """``envelope(book)`` with asks added until it is HUGE_MESSAGE_BYTES on the wire.

    Venues spell a level out differently (Kraken's ``{"price": …, "qty": …}``, Coinbase's
    update records with a side and a time each), so what a level costs is measured on a
    sample of the ladder in the venue's own envelope, not assumed from ``[price, amount]``.
    """
    base = len(_dumps(envelope(book)))
    last = asks[-1] if asks else ["1", "1"]
    sample = _ladder(last, 64 * 1024)
    asks.extend(sample)
    per_level = (len(_dumps(envelope(book))) - base) / len(sample)
    del asks[-len(sample) :]
    if per_level <= 0:  # an envelope that ignores extra asks: size them as [price, amount]
        asks.extend(_ladder(last, HUGE_MESSAGE_BYTES))
        return _dumps(envelope(book))
    # A few hundred levels (some KB) over the estimate: levels differ a little in length.
    count = max(0, math.ceil((HUGE_MESSAGE_BYTES - base) / per_level)) + 256
    while True:
        asks.extend(_ladder(last, 0, count=count))
        text = _dumps(envelope(book))
        if len(text) >= HUGE_MESSAGE_BYTES:
            return text
        last, count = asks[-1], 1024


def data_message(session: Session, channel: Channel, rendered: Rendered) -> str:
    """The wire text of one data message, as ``session``'s venue sends it on ``channel``."""
    return _dumps(session.envelope(channel, session.payload(channel, rendered)))


def _dumps(message: object) -> str:
    return orjson.dumps(message).decode()


def _best(side: list[list[Any]]) -> list[Any]:
    """The best level of a side, to spoil; a fresh one if the side is empty."""
    if not side:
        side.append(["1", "1"])
    return side[0]


def _cross(bids: list[list[Any]], asks: list[list[Any]]) -> None:
    """Add a best bid at or above the best ask (above it when there is a second ask)."""
    if not asks:
        asks.append(list(bids[0]) if bids else ["1", "1"])
    price = asks[1][0] if len(asks) > 1 else asks[0][0]
    bids.insert(0, [price, asks[0][1]])


def _ladder(last: list[Any], size: int, *, count: int | None = None) -> list[list[str]]:
    """Ascending ask levels after ``last`` (distinct prices, its precision) worth ``size``
    bytes of JSON (or ``count`` levels): a syntactically valid, absurdly deep book."""
    whole, _, fraction = str(last[0]).partition(".")
    decimals = len(fraction)
    try:
        units = int(whole + fraction)
    except ValueError:  # a pinned price in another notation ("1e-3"): any ladder will do
        units, decimals = 0, _WIRE_DECIMALS
    units = max(units, 0)
    qty = str(last[1])
    if count is None:
        level_bytes = len(_dumps([format_units(units, decimals), qty])) + 1
        count = size // level_bytes + 1
    return [[format_units(units + step, decimals), qty] for step in range(1, count + 1)]


class SymbolState:
    """This venue's view of one symbol: its moving book, any pin, and a change counter."""

    __slots__ = (
        "book",
        "cache",
        "changed",
        "driven",
        "pinned",
        "rng",
        "symbol",
        "update_id",
        "version",
    )

    def __init__(self, symbol: str, rng: random.Random) -> None:
        self.symbol = symbol
        self.rng = rng
        self.book: MovingBook | None = None
        self.pinned: tuple[TextLevels, TextLevels] | None = None
        # Bumped on every change; sessions compare it with what they last sent.
        self.version = 0
        # Binance-style ``lastUpdateId``: grows by the number of (notional) updates per change.
        self.update_id = rng.randrange(1_000_000_000, 9_000_000_000)
        self.changed = trio.Event()
        self.driven = False
        self.cache: dict[int, Rendered] = {}


class Client:
    """One accepted (or handshaking) client connection, as the venue tracks it."""

    def __init__(self, venue: SimulatedVenue, stream: trio.SocketStream | None) -> None:
        self.venue = venue
        self.stream = stream  # None only for an OfflineClient
        self.ws: WebSocketConnection | None = None
        self.session: Session | None = None
        # Cancelled by kill(): ends everything on this connection with no close frame.
        self.scope = trio.CancelScope()
        self.session_nursery: trio.Nursery | None = None
        self.killed = False
        self.ended = False
        # Set while close() runs: the ConnectionClosed its own close frame causes in the
        # other tasks must not end the session before the close handshake is done.
        self.closing = False
        self.done = trio.Event()
        self.opened_at = trio.current_time()
        # Valid data messages sent, and how many more may go out before drop_connections()
        # resets the connection (None: no drop pending).
        self.data_messages_sent = 0
        self.drop_after: int | None = None

    @property
    def open(self) -> bool:
        return self.ws is not None and not self.ended

    def start_soon(self, fn: Callable[[], Awaitable[object]]) -> bool:
        """Run ``fn`` as part of this connection's session (it ends with the connection);
        False if the session is over and ``fn`` will never run."""
        if self.session_nursery is not None and not self.ended:
            self.session_nursery.start_soon(fn)
            return True
        return False

    async def send(self, message: str | bytes) -> bool:
        """Send one frame (text for str, binary for bytes); False (and the session ends) if
        the connection is gone."""
        if self.ws is None or self.ended:
            return False
        try:
            await self.ws.send_message(message)
        except ConnectionClosed:
            self.lost()
            return False
        return True

    async def send_data(
        self, channel: Channel, rendered: Rendered, message: str | None = None
    ) -> bool:
        """Send one data message, unless the venue's faults say otherwise: nothing while
        muted, a malformed message instead now and then (garbage_rate), and a reset once a
        pending drop_connections() count is used up. False once the connection is gone.

        `message` is the wire text when the session built it (delta venues, whose messages
        depend on what the connection was sent before); by default the session's payload
        and envelope for `rendered`."""
        venue, session = self.venue, self.session
        if session is None or self.ended:
            return False
        if venue.muted:
            return True
        if venue.garbage > 0 and venue.fault_rng.random() < venue.garbage:
            kind = venue.fault_rng.choice(GARBAGE_KINDS)
            return await self.send_malformed(venue.malformed_message(session, channel, kind))
        if message is None:
            message = data_message(session, channel, rendered)
        venue.note_sent(channel.symbol, rendered)
        if not await self.send(message):
            return False
        self.data_messages_sent += 1
        venue.data_messages_sent += 1
        if self.drop_after is not None:
            self.drop_after -= 1
            if self.drop_after <= 0:
                self.abort()
                return False
        return True

    async def send_malformed(self, message: str | bytes) -> bool:
        if not await self.send(message):
            return False
        self.venue.malformed_sent += 1
        return True

    def end(self) -> None:
        """Stop this connection's session; the socket is then closed (FIN, no close frame)."""
        self.ended = True
        if self.session_nursery is not None:
            self.session_nursery.cancel_scope.cancel()

    def lost(self) -> None:
        """The WebSocket reported itself closed: end, unless that is our own close() at work
        (it ends the session itself once the handshake is done)."""
        if not self.closing:
            self.end()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close gracefully: close frame, wait (bounded) for the client's, then end. Returns
        at once if a close is already under way.

        A stalled venue closes nothing: this waits for unstall() first.
        """
        await self.venue.wait_unstalled()
        ws = self.ws
        if self.closing:
            return
        if ws is not None and not self.ended:
            self.closing = True
            with trio.move_on_after(self.venue.close_timeout):
                await ws.aclose(code, reason)
        self.end()

    def abort(self) -> None:
        """Reset the TCP connection at once: no close frame, no FIN, an RST."""
        self.killed = True
        if self.stream is not None:
            _set_reset_on_close(self.stream)
        self.scope.cancel()


class OfflineClient(Client):
    """A connection with no socket, for recordings made without serving (the ingest
    benchmark): the session's replies are kept in :attr:`sent`, and the tasks it would start
    (data loops, heartbeats) never run; the caller produces the data itself, in virtual time.

    Feed it the client's requests with ``await session.received(client, request)``; the
    session then holds the channels a real connection would have subscribed to.
    """

    def __init__(self, venue: SimulatedVenue, session: Session) -> None:
        super().__init__(venue, None)
        self.session = session
        self.sent: list[str | bytes] = []

    @property
    def open(self) -> bool:
        return not self.ended

    def start_soon(self, fn: Callable[[], Awaitable[object]]) -> bool:
        return False

    async def send(self, message: str | bytes) -> bool:
        if self.ended:
            return False
        self.sent.append(message)
        return True


def _set_reset_on_close(stream: trio.SocketStream) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    with contextlib.suppress(OSError):  # already closed
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Session(abc.ABC):
    """One connection's protocol state; subclasses implement a venue's messages."""

    async def opened(self, client: Client) -> None:  # noqa: B027 - optional hook
        """Called once the handshake completed (e.g. to start streams named in the URL)."""

    @abc.abstractmethod
    async def received(self, client: Client, message: str | bytes) -> None:
        """Handle one client message. Must not raise for malformed input."""

    def channels(self) -> Sequence[Channel]:
        """The data subscriptions of this connection, in subscription order."""
        return ()

    def payload(self, channel: Channel, rendered: Rendered) -> dict[str, Any]:
        """The part of a data message that carries ``bids`` and ``asks``."""
        raise NotImplementedError(f"{type(self).__name__} sends no data")

    def envelope(self, channel: Channel, payload: dict[str, Any]) -> object:
        """The whole data message around ``payload``, ready to be serialized."""
        raise NotImplementedError(f"{type(self).__name__} sends no data")


async def _bind(host: str, port: int) -> trio.SocketListener:
    """One listening socket on ``host:port`` with SO_REUSEADDR, so restart() can rebind."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind(sockaddr)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


class SimulatedVenue(abc.ABC):
    """A local WebSocket server speaking one exchange's public order-book protocol.

    Run it with ``port = await nursery.start(venue.serve)``. Books move only for symbols a
    client has asked for (or a test pinned). Counters (:attr:`connections`,
    :attr:`connections_total`, :attr:`subscribe_requests`, :attr:`data_messages_sent`,
    :attr:`malformed_sent`, :attr:`connections_refused`, :attr:`subscriptions_rejected`,
    :attr:`heartbeats_ignored`) and :attr:`connection_attempts_at` are plain attributes
    for tests.

    Faults: :meth:`drop_connections`, :meth:`close_connections`, :meth:`stall`,
    :meth:`mute`, :meth:`ignore_heartbeats`, :meth:`refuse`, :meth:`reject_subscriptions`,
    :meth:`send_malformed`, :meth:`garbage_rate` and :attr:`max_connection_age`;
    :meth:`reset_faults` heals them all. :meth:`kill` / :meth:`restart` and
    :meth:`freeze` (the market, not a fault) are separate.
    """

    name: str = "venue"

    def __init__(
        self,
        market: Market,
        *,
        seed: int | None = None,
        depth: int,
        updates_per_second: float,
        ping_interval: float | None = None,
        pong_timeout: float = 60.0,
        handshake_timeout: float = 10.0,
        close_timeout: float = 2.0,
        max_connection_age: float | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        if updates_per_second <= 0:
            raise ValueError("updates_per_second must be positive")
        self.market = market
        self.seed = seed
        self.depth = depth
        self.updates_per_second = updates_per_second
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        # Seconds after which the venue closes a connection (Binance: 24 h); None: never.
        self.max_connection_age = max_connection_age

        self.connections = 0
        self.connections_total = 0
        self.subscribe_requests = 0
        self.data_messages_sent = 0  # valid book messages, all connections
        self.malformed_sent = 0  # send_malformed() and garbage_rate() messages
        self.connections_refused = 0
        self.subscriptions_rejected = 0
        self.heartbeats_ignored = 0
        # trio.current_time() of every accepted TCP connection, refused or not.
        self.connection_attempts_at: list[float] = []

        # Faults (see reset_faults). Seeded like the books, so a seeded run is repeatable.
        self.fault_rng = (
            random.Random(f"aggtrio-faults:{seed}:{self.name}")
            if seed is not None
            else random.Random()
        )
        self._gate = _Gate()
        self._unmuted = trio.Event()
        self._unmuted.set()
        self._ignore_heartbeats = False
        self._refusing = False
        self._refuse_status: int | None = None
        self._rejecting = False
        self._garbage = 0.0

        self._host = "127.0.0.1"
        self._port = 0
        self._nursery: trio.Nursery | None = None
        self._listening = False
        self._generation = 0
        self._listen_scope: trio.CancelScope | None = None
        self._listen_done: trio.Event | None = None
        self._clients: set[Client] = set()
        self._symbols: dict[str, SymbolState] = {}
        self._last_sent: dict[str, SimBook] = {}
        self._frozen = False

    # -- addresses -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (0 before :meth:`serve` started)."""
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        """The base endpoint, ``ws://127.0.0.1:<port>``, without any path."""
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self._port}"

    @property
    def listening(self) -> bool:
        return self._listening

    # -- books ---------------------------------------------------------------------------

    def book(self, symbol: str) -> SimBook | None:
        """What this venue last sent for ``symbol`` (any spelling), or None if nothing yet."""
        return self._last_sent.get(normalize_symbol(symbol))

    def set_book(
        self,
        symbol: str,
        bids: Sequence[tuple[str | float, str | float]],
        asks: Sequence[tuple[str | float, str | float]],
    ) -> None:
        """Pin ``symbol``'s book: it is sent as given (no sorting, no checks beyond numbers
        being parseable) until :meth:`unpin`, and the market stops moving it here."""
        state = self._state(normalize_symbol(symbol))
        pinned_bids = tuple((_pinned_text(p), _pinned_text(q)) for p, q in bids)
        pinned_asks = tuple((_pinned_text(p), _pinned_text(q)) for p, q in asks)
        state.pinned = (pinned_bids, pinned_asks)
        self._publish(state)

    def unpin(self, symbol: str) -> None:
        """Let the market move ``symbol`` again (from where this venue's book was)."""
        state = self._symbols.get(normalize_symbol(symbol))
        if state is not None and state.pinned is not None:
            state.pinned = None
            self._publish(state)

    def freeze(self) -> None:
        """Stop all market moves for this venue (books stay as they are)."""
        self._frozen = True

    def unfreeze(self) -> None:
        self._frozen = False

    @property
    def frozen(self) -> bool:
        return self._frozen

    def _state(self, symbol: str) -> SymbolState:
        state = self._symbols.get(symbol)
        if state is None:
            rng = self.market.venue_rng(self.name, self.seed, symbol)
            state = self._symbols[symbol] = SymbolState(symbol, rng)
        if not state.driven and self._nursery is not None:
            state.driven = True
            self._nursery.start_soon(self._drive, state)
        return state

    def symbol_state(self, symbol: str) -> SymbolState:
        """The state of a canonical symbol, created (and moving) on first use."""
        return self._state(symbol)

    def _publish(self, state: SymbolState) -> None:
        state.version += 1
        state.update_id += state.rng.randint(1, 25)
        state.cache.clear()
        changed, state.changed = state.changed, trio.Event()
        changed.set()

    def _ensure_book(self, state: SymbolState) -> MovingBook:
        if state.book is None:
            state.book = self.market.new_book(
                state.symbol, rng=state.rng, capacity=self.depth, now=trio.current_time()
            )
            if state.version == 0:
                self._publish(state)
        return state.book

    async def _drive(self, state: SymbolState) -> None:
        """Move this symbol's book at random times, ``updates_per_second`` on average."""
        while True:
            await trio.sleep(self.next_step_delay(state))
            if self._frozen or state.pinned is not None:
                continue
            self._step(state, trio.current_time())

    def next_step_delay(self, state: SymbolState) -> float:
        """Seconds until the symbol's book next moves (exponential: a Poisson process)."""
        return state.rng.expovariate(self.updates_per_second)

    def step(self, symbol: str, now: float) -> None:
        """Move ``symbol``'s book once, as the venue's own driver does at random times.

        Sans-IO, for recordings made without serving (the ingest benchmark); like the rest
        of the venue it must run inside trio (books are created at trio's current time).
        """
        self._step(self.symbol_state(symbol), now)

    def _step(self, state: SymbolState, now: float) -> None:
        if state.book is None:
            self._ensure_book(state)
        else:
            state.book.step(now)
            self._publish(state)

    def render(self, state: SymbolState, depth: int) -> Rendered:
        """The symbol's current book, top ``depth`` levels, as wire text (cached per version)."""
        if state.pinned is None:
            self._ensure_book(state)
        cached = state.cache.get(depth)
        if cached is not None and cached.version == state.version:
            return cached
        if state.pinned is not None:
            bids, asks = state.pinned[0][:depth], state.pinned[1][:depth]
        else:
            assert state.book is not None
            tick_bids, tick_asks = state.book.levels(depth)
            spec = state.book.spec
            bids = self._format_levels(spec, tick_bids)
            asks = self._format_levels(spec, tick_asks)
        rendered = Rendered(
            state.version, state.update_id, bids, asks, SimBook(_to_floats(bids), _to_floats(asks))
        )
        state.cache[depth] = rendered
        return rendered

    def note_sent(self, symbol: str, rendered: Rendered) -> None:
        """Record what goes out (called just before sending, so book() is never behind)."""
        self._last_sent[symbol] = rendered.book

    def price_decimals(self, spec: SymbolSpec) -> int:
        """Decimals this venue prints prices with; the pair's own precision by default."""
        return spec.price_decimals

    def qty_decimals(self, spec: SymbolSpec) -> int:
        return _WIRE_DECIMALS

    def _format_levels(self, spec: SymbolSpec, levels: list[tuple[int, int]]) -> TextLevels:
        price_decimals = max(self.price_decimals(spec), spec.tick_decimals)
        qty_decimals = max(self.qty_decimals(spec), spec.lot_decimals)
        tick_scale = 10 ** (price_decimals - spec.tick_decimals)
        lot_scale = 10 ** (qty_decimals - spec.lot_decimals)
        return tuple(
            (
                format_units(ticks * tick_scale, price_decimals),
                format_units(lots * lot_scale, qty_decimals),
            )
            for ticks, lots in levels
        )

    # -- faults --------------------------------------------------------------------------

    def drop_connections(self, after_messages: int = 0) -> None:
        """Reset (TCP RST, no close frame) every connection open now once it has sent
        ``after_messages`` more valid data messages; 0 resets them now. The venue keeps
        listening, so clients can reconnect at once (unlike :meth:`kill`)."""
        if after_messages < 0:
            raise ValueError("after_messages must not be negative")
        clients = list(self._clients)
        for client in clients:
            if after_messages == 0:
                client.abort()
            else:
                client.drop_after = after_messages
        logger.info(
            "%s simulator: dropping %d connections after %d messages",
            self.name,
            len(clients),
            after_messages,
        )

    async def close_connections(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every open connection cleanly with ``code`` (close frame, then FIN); returns
        once they are closed. On a stalled venue this waits for :meth:`unstall`."""
        clients = self.open_clients()
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.close, code, reason)
        logger.info("%s simulator closed %d connections (%d)", self.name, len(clients), code)

    def stall(self) -> None:
        """Every connection, open or new, stops sending and reading: no data, no replies,
        no pongs, no close handshake; sockets stay open. Venue-initiated messages and closes
        (pings, notices, close_connections) wait for :meth:`unstall`; kill and
        drop_connections still reset at once."""
        self._gate.close()

    def unstall(self) -> None:
        self._gate.open()

    @property
    def stalled(self) -> bool:
        return not self._gate.is_open

    async def wait_unstalled(self) -> None:
        await self._gate.wait_open()

    def mute(self) -> None:
        """Stop data messages only: pings, pongs, heartbeat replies and acks still flow (a
        quiet but healthy venue; for Binance, the 100 ms timer stopped)."""
        if self._unmuted.is_set():
            self._unmuted = trio.Event()

    def unmute(self) -> None:
        self._unmuted.set()

    @property
    def muted(self) -> bool:
        return not self._unmuted.is_set()

    async def wait_unmuted(self) -> None:
        while not self._unmuted.is_set():
            await self._unmuted.wait()

    def ignore_heartbeats(self, on: bool = True) -> None:
        """Stop answering application-level heartbeats (Bitstamp ``bts:heartbeat``; Binance
        has none). Data goes on unless also muted; WebSocket pings are still answered."""
        self._ignore_heartbeats = on

    @property
    def ignoring_heartbeats(self) -> bool:
        return self._ignore_heartbeats

    def refuse(self, on: bool = True, *, status: int | None = None) -> None:
        """Reset new TCP connections at once, before the WebSocket handshake (counted in
        :attr:`connections_refused`). Open connections are unaffected: add
        :meth:`drop_connections` for an outage.

        trio-websocket 0.12.2 clients notice a reset during the handshake only at their
        ``connect_timeout``; ``status`` (e.g. 503, 429) answers the handshake with that HTTP
        error instead, which they see at once as ``ConnectionRejected``.
        """
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"refusal status must be an HTTP error (4xx, 5xx), not {status}")
        self._refusing = on
        self._refuse_status = status if on else None

    @property
    def refusing(self) -> bool:
        return self._refusing

    def reject_subscriptions(self, on: bool = True) -> None:
        """Answer subscriptions with the venue's error instead of data (counted in
        :attr:`subscriptions_rejected`); existing subscriptions keep streaming."""
        self._rejecting = on

    @property
    def rejecting_subscriptions(self) -> bool:
        return self._rejecting

    def garbage_rate(self, fraction: float) -> None:
        """Replace this fraction (0..1) of data messages with a random malformed kind
        (never ``huge``); 0 turns it off."""
        if not 0.0 <= fraction <= 1.0:  # also rejects NaN
            raise ValueError(f"garbage rate must be between 0 and 1, not {fraction!r}")
        self._garbage = float(fraction)

    @property
    def garbage(self) -> float:
        return self._garbage

    def reset_faults(self) -> None:
        """Healthy again: unstalled, unmuted, heartbeats answered, connections accepted,
        subscriptions served, no garbage, no pending drop. Does not undo kill() (use
        restart()) or freeze()."""
        self.unstall()
        self.unmute()
        self._ignore_heartbeats = False
        self.refuse(False)
        self._rejecting = False
        self._garbage = 0.0
        for client in self._clients:
            client.drop_after = None

    def malformed_message(self, session: Session, channel: Channel, kind: str) -> str | bytes:
        """``channel``'s current data message on this connection, spoiled by ``kind``."""
        rendered = self.render(self.symbol_state(channel.symbol), channel.depth)
        payload = session.payload(channel, rendered)
        return malform(kind, payload, partial(session.envelope, channel), self.fault_rng)

    async def _huge_message(
        self, session: Session, channel: Channel, cache: dict[str, str | bytes], lock: trio.Lock
    ) -> str | bytes:
        """A ``huge`` message, built once per message shape and call (it takes a good
        fraction of a second) and in a thread, so the venue keeps serving meanwhile."""
        shape = _dumps(session.envelope(channel, {}))  # e.g. combined vs raw Binance
        async with lock:  # the other connections wait for the first build, then share it
            message = cache.get(shape)
            if message is None:
                rendered = self.render(self.symbol_state(channel.symbol), channel.depth)
                payload = session.payload(channel, rendered)
                build = partial(malform, "huge", payload, partial(session.envelope, channel))
                message = cache[shape] = await trio.to_thread.run_sync(build, self.fault_rng)
        return message

    async def send_malformed(
        self, kind: str, symbol: str | None = None, count: int = 1, *, wait: float = 5.0
    ) -> None:
        """Send ``count`` malformed messages of ``kind`` per data channel on every open
        connection (only channels of ``symbol`` if given; connections with none get nothing).

        They go out in each connection's own task, so a client that cannot take an 8 MiB
        message blocks only its own connection; this returns when all are written or after
        ``wait`` seconds, whichever is first. :meth:`book` is not affected.
        """
        if kind not in MALFORMED_KINDS:
            raise ValueError(
                f"unknown malformed kind {kind!r} (known: {', '.join(MALFORMED_KINDS)})"
            )
        if count < 1:
            raise ValueError("count must be at least 1")
        wanted = normalize_symbol(symbol) if symbol is not None else None
        huge: dict[str, str | bytes] = {}
        huge_lock = trio.Lock()

        def job(
            client: Client, session: Session, channels: list[Channel]
        ) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                for channel in channels:
                    for _ in range(count):
                        if kind == "huge":
                            message = await self._huge_message(session, channel, huge, huge_lock)
                        else:
                            message = self.malformed_message(session, channel, kind)
                        if not await client.send_malformed(message):
                            return

            return run

        jobs = []
        for client in self.open_clients():
            session = client.session
            if session is None:
                continue
            channels = [c for c in session.channels() if wanted in (None, c.symbol)]
            if channels:
                jobs.append((client, job(client, session, channels)))
        logger.info("%s simulator: sending malformed %r messages", self.name, kind)
        await self._on_each(jobs, wait)

    # -- serving -------------------------------------------------------------------------

    @abc.abstractmethod
    def open_session(self, path: str) -> Session | int:
        """A session for a handshake asking for ``path``, or an HTTP status to reject it."""

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; reports the bound port through ``task_status``."""
        if self._nursery is not None:
            raise RuntimeError(f"{self.name} simulator is already serving")
        listener = await _bind(host, port)
        self._host = host
        self._port = listener.socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._listen, listener)
                for state in self._symbols.values():
                    if not state.driven:
                        state.driven = True
                        nursery.start_soon(self._drive, state)
                logger.info("%s simulator listening on %s", self.name, self.url)
                task_status.started(self._port)
                # kill() may leave no task running: serve must still last until cancelled.
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._listening = False
            for state in self._symbols.values():
                state.driven = False

    async def _listen(
        self, listener: trio.SocketListener, *, task_status: trio.TaskStatus[None]
    ) -> None:
        scope = self._listen_scope = trio.CancelScope()
        done = self._listen_done = trio.Event()
        self._generation += 1
        handler = partial(self._handle_stream, self._generation)
        self._listening = True
        try:
            with scope:
                # Connections live in the venue's nursery: stopping the listener (kill) must
                # not end them by itself; kill() resets them explicitly.
                serve = partial(
                    trio.serve_listeners, handler, [listener], handler_nursery=self._nursery
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve)
                    task_status.started()
        finally:
            self._listening = False
            await trio.aclose_forcefully(listener)
            done.set()

    async def _stop_listening(self) -> None:
        if self._listen_scope is not None and self._listen_done is not None:
            self._listen_scope.cancel()
            await self._listen_done.wait()

    async def kill(self) -> None:
        """Abrupt outage: stop listening (new connections are refused) and reset every open
        connection without a close frame. :meth:`serve` keeps running; see :meth:`restart`."""
        await self._stop_listening()
        clients = list(self._clients)
        for client in clients:
            client.abort()
        for client in clients:
            await client.done.wait()
        logger.info("%s simulator killed (%d connections reset)", self.name, len(clients))

    async def restart(self) -> None:
        """Listen again on the same port after :meth:`kill`."""
        if self._nursery is None:
            raise RuntimeError(f"{self.name} simulator is not serving")
        if self._listening:
            return
        listener = await _bind(self._host, self._port)
        await self._nursery.start(self._listen, listener)
        logger.info("%s simulator listening again on %s", self.name, self.url)

    def open_clients(self) -> list[Client]:
        return [client for client in self._clients if client.open]

    async def notify_and_close(self, message: Callable[[Client], str], grace: float) -> None:
        """Send every open connection ``message(client)`` now, close those still open after
        ``grace`` seconds (in the background). Each notice goes out in its connection's own
        task: a client that reads nothing delays only itself (this waits at most
        ``close_timeout`` for the notices)."""
        clients = self.open_clients()
        jobs = [(client, partial(client.send, message(client))) for client in clients]
        await self._on_each(jobs, self.close_timeout)
        if self._nursery is not None:
            self._nursery.start_soon(self._close_after, clients, grace)

    async def _on_each(
        self, jobs: Sequence[tuple[Client, Callable[[], Awaitable[object]]]], wait: float
    ) -> None:
        """Run each job as part of its connection's session; wait until all are done, or
        for ``wait`` seconds. A job whose connection is gone never runs."""
        pending = 0
        done = trio.Event()

        def task(job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                nonlocal pending
                try:
                    await job()
                finally:
                    pending -= 1
                    if pending == 0:
                        done.set()

            return run

        for client, job in jobs:
            pending += 1
            if not client.start_soon(task(job)):
                pending -= 1
        if pending:
            with trio.move_on_after(wait):
                await done.wait()

    async def _close_after(self, clients: list[Client], grace: float) -> None:
        await trio.sleep(grace)
        async with trio.open_nursery() as nursery:
            for client in clients:
                if client.open:
                    nursery.start_soon(client.close)

    async def _handle_stream(self, generation: int, stream: trio.SocketStream) -> None:
        self.connection_attempts_at.append(trio.current_time())
        if generation != self._generation or not self._listening:
            # Accepted just before a kill(): treat it like the rest of the killed connections.
            _set_reset_on_close(stream)
            await trio.aclose_forcefully(stream)
            return
        if self._refusing and self._refuse_status is None:
            self.connections_refused += 1
            _set_reset_on_close(stream)
            await trio.aclose_forcefully(stream)
            return
        client = Client(self, stream)
        self._clients.add(client)
        try:
            with client.scope:
                async with trio.open_nursery() as nursery:
                    try:
                        await self._run_client(client, nursery)
                    finally:
                        nursery.cancel_scope.cancel()
        except* Exception:
            # Protocol errors from a misbehaving client, or trio-websocket's own (see
            # STACK.md): they end this connection only, never the simulator. except* also
            # strips them from a group that carries a cancellation, which then propagates.
            logger.debug("%s: connection ended with an error", self.name, exc_info=True)
        finally:
            self._clients.discard(client)
            client.ended = True
            if client.killed:
                _set_reset_on_close(stream)
            await trio.aclose_forcefully(stream)
            client.done.set()

    async def _run_client(self, client: Client, nursery: trio.Nursery) -> None:
        request = None
        assert client.stream is not None  # an accepted connection, never an OfflineClient
        # A connection accepted while stalled gets no handshake, and no timeout either.
        await self.wait_unstalled()
        with trio.move_on_after(self.handshake_timeout):
            request = await wrap_server_stream(
                nursery,
                GatedStream(client.stream, self._gate),
                message_queue_size=_MESSAGE_QUEUE_SIZE,
                receive_buffer_size=None,
            )
        if request is None:
            return
        session: Session | int
        if self._refuse_status is not None:
            self.connections_refused += 1
            session = self._refuse_status
        else:
            try:
                session = self.open_session(request.path)
            except Exception:
                logger.exception("%s: failed to route %r", self.name, request.path)
                session = 500
        if isinstance(session, int):
            logger.debug("%s: rejecting %r with HTTP %d", self.name, request.path, session)
            body = f"{session} {_REASONS.get(session, 'Error')}".encode()
            await request.reject(session, body=body)
            return
        ws = await request.accept()
        self.connections += 1
        self.connections_total += 1
        try:
            async with trio.open_nursery() as session_nursery:
                client.session_nursery = session_nursery
                client.session = session
                client.ws = ws
                session_nursery.start_soon(self._read_loop, client, session)
                if self.ping_interval is not None:
                    session_nursery.start_soon(self._ping_loop, client, self.ping_interval)
                if self.max_connection_age is not None:
                    session_nursery.start_soon(self._age_limit, client, self.max_connection_age)
                await session.opened(client)
        finally:
            self.connections -= 1

    async def _read_loop(self, client: Client, session: Session) -> None:
        # Always reading keeps trio-websocket answering the client's pings and close frame.
        assert client.ws is not None
        while True:
            try:
                message = await client.ws.get_message()
            except ConnectionClosed:
                break
            try:
                await session.received(client, message)
            except ConnectionClosed:
                break
            except Exception:
                logger.exception("%s: error handling %r", self.name, message[:200])
        client.lost()

    async def _ping_loop(self, client: Client, interval: float) -> None:
        assert client.ws is not None
        count = 0
        while True:
            await trio.sleep(interval)
            await self.wait_unstalled()
            count += 1
            with trio.move_on_after(self.pong_timeout) as scope:
                try:
                    await client.ws.ping(b"%d" % count)
                except ConnectionClosed:
                    client.lost()
                    return
            if scope.cancelled_caught and self.stalled:
                continue  # the pong is unread because we stalled: not the client's fault
            if scope.cancelled_caught:
                logger.info("%s: no pong within %ss, disconnecting", self.name, self.pong_timeout)
                await client.close(1008, "pong timeout")
                return

    async def _age_limit(self, client: Client, age: float) -> None:
        # (?) Binance documents only "expect to be disconnected at the 24 hour mark", with
        # no notice: the simulator closes cleanly (1000) without sending anything first.
        await trio.sleep(age)
        logger.info("%s: connection reached its maximum age of %ss, closing", self.name, age)
        await client.close(1000, "connection lifetime reached")


_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
