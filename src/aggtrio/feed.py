"""The one connect / subscribe / read / reconnect loop that drives every venue adapter.

A feed never dies because of what a venue does: connection errors, handshake failures,
stalls and malformed messages are logged and counted, the venue is reported down to the
aggregator at once, and the loop reconnects with capped exponential backoff and jitter.

When the venue asks for a reconnect (maintenance, or its connection age limit is near), the
feed opens the new connection first and retires the old one only once the new one has
delivered every symbol the old one carried (make-before-break), so the venue never leaves
the merged book.
"""

from __future__ import annotations

import collections
import enum
import logging
import random
import time
from collections.abc import Callable

import attrs
import trio
import trio_websocket
import wsproto.utilities

from aggtrio.model import BookEvent, VenueBook, VenueDown
from aggtrio.venues.base import (
    CrossedBookError,
    MalformedMessageError,
    ReconnectRequested,
    Resync,
    Subscribed,
    VenueAdapter,
    VenueError,
)
from aggtrio.websocket import AbandonConnection, HandshakeFailedError, open_client_websocket

log = logging.getLogger(__name__)

# A queue of a few messages keeps trio-websocket's reader (and so its ping replies) running
# while we hand a message on.
MESSAGE_QUEUE_SIZE = 16
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 2.0
SAMPLE_CHARS = 200
# How long a retiring connection keeps serving while its successor comes up.
HANDOVER_TIMEOUT = 10.0
# Rotate this long before the venue's connection age limit would cut us off.
ROTATE_MARGIN = 600.0


class FeedState(enum.Enum):
    CONNECTING = "connecting"
    SUBSCRIBED = "subscribed"
    LIVE = "live"
    STALE = "stale"
    BACKING_OFF = "backing off"


@attrs.frozen(slots=True)
class Backoff:
    """Capped exponential backoff with jitter.

    The first retry is immediate (venues drop healthy connections routinely); after that
    each consecutive failure doubles the delay up to `maximum`. A connection that stays up
    for `stable_after` seconds resets the sequence.
    """

    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 30.0

    def delay(self, failures: int, rng: random.Random) -> float:
        if failures <= 1:
            return 0.0
        # The exponent is capped first: 2.0 ** 1024 overflows after a long outage.
        ceiling = min(self.maximum, self.initial * 2.0 ** min(failures - 2, 64))
        # "Equal jitter": at least half the ceiling, so retries never collapse to a tight loop.
        return ceiling / 2.0 + rng.uniform(0.0, ceiling / 2.0)


@attrs.frozen(slots=True)
class GarbageLimit:
    """Recycle a connection that sends more than `messages` malformed messages in `window` s.

    A venue that keeps sending garbage is usually a broken session (a bad deploy, a proxy
    mangling frames); a fresh connection is the cheapest thing that can fix it.
    """

    messages: int = 20
    window: float = 10.0


@attrs.define
class FeedStats:
    """What an operator wants to know about one venue connection."""

    venue: str
    state: FeedState = FeedState.CONNECTING
    messages: int = 0
    malformed: int = 0
    # Of the malformed: a venue's own book crossed (best bid >= best ask), dropped.
    crossed: int = 0
    venue_errors: int = 0
    # A symbol's book broke continuity (sequence gap, checksum mismatch) and was refetched.
    resyncs: int = 0
    # Connections opened after the first (any cause, orderly handovers included).
    reconnects: int = 0
    stalls: int = 0
    garbage_recycles: int = 0
    handovers: int = 0
    last_message_ns: int = 0

    def last_message_age(self, now_ns: int | None = None) -> float | None:
        """Seconds since the last message of any kind, or None if none arrived yet."""
        if not self.last_message_ns:
            return None
        return ((now_ns or time.time_ns()) - self.last_message_ns) / 1e9

    def summary(self) -> str:
        return (
            f"messages={self.messages} malformed={self.malformed} "
            f"reconnects={self.reconnects} stalls={self.stalls} resyncs={self.resyncs}"
        )


@attrs.frozen(slots=True)
class ConnectionEnded:
    reason: str
    # The venue asked for the reconnect (maintenance, age limit): no backoff is due.
    orderly: bool
    stale: bool = False


class StaleFeedError(AbandonConnection):
    """Nothing arrived within the liveness timeout (no close handshake: nobody answers)."""


class TooMuchGarbageError(Exception):
    """The venue sent more malformed messages than the garbage limit allows."""


class _ReconnectNow(Exception):
    """The venue asked for a reconnect and no handover is possible: close at once."""


class _ResyncByReconnect(Exception):
    """A symbol's book broke and the venue cannot resend one symbol's snapshot alone."""


class _HandedOver(Exception):
    """A successor connection now carries every symbol this one did."""


UNEXPECTED = "unexpected error"


# Our own reasons for ending a connection: when one is among the errors a close produced,
# it is the one to report.
_OWN_REASONS = (
    _HandedOver,
    _ReconnectNow,
    _ResyncByReconnect,
    StaleFeedError,
    TooMuchGarbageError,
)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _main_cause(exc: BaseException) -> BaseException | None:
    """The error that explains why a connection ended, or None when we are being cancelled.

    Closing a connection can add errors of its own beside the real cause (trio-websocket's
    reader failing on a ping that races our close frame, #184), so the cause is picked by
    kind: our own reasons first, then anything that is not a cancellation.
    """
    leaves = _leaves(exc)
    if any(isinstance(leaf, trio.Cancelled) for leaf in leaves) and (
        trio.current_effective_deadline() == -float("inf")
    ):
        return None  # our scope is cancelled: shutting down
    for kinds in (_OWN_REASONS, (Exception,)):
        for leaf in leaves:
            if isinstance(leaf, kinds):
                return leaf
    return leaves[0]


def _why_connection_ended(exc: BaseException) -> str:
    """A one-line reason for the log (UNEXPECTED for errors nobody anticipated)."""
    if isinstance(exc, _HandedOver):
        return "handed over to a new connection"
    if isinstance(exc, _ReconnectNow):
        return f"reconnect requested: {exc}"
    if isinstance(exc, StaleFeedError):
        return f"stale: {exc}"
    if isinstance(exc, _ResyncByReconnect):
        return f"resync: {exc}"
    if isinstance(exc, TooMuchGarbageError):
        return f"recycled: {exc}"
    if isinstance(exc, trio_websocket.ConnectionClosed):
        close = exc.reason
        if close is None:
            return "connection closed"
        detail = f" {close.reason}" if close.reason else ""
        return f"connection closed ({close.code} {close.name}{detail})"
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"handshake rejected with HTTP {exc.status_code}"
    if isinstance(exc, (trio_websocket.HandshakeError, HandshakeFailedError)):
        cause = exc.__cause__ or exc.__context__
        return f"connection failed: {cause or exc or type(exc).__name__}"
    if isinstance(exc, trio.TooSlowError):
        return "connection failed: no WebSocket handshake within the connect timeout"
    if isinstance(exc, (OSError, trio.BrokenResourceError)):
        return f"connection failed: {exc or type(exc).__name__}"
    if isinstance(exc, wsproto.utilities.LocalProtocolError):
        return "connection aborted by trio-websocket (#184)"
    if isinstance(exc, trio.Cancelled):
        # A Cancelled that is not ours: trio-websocket #184 leaks one when a close races
        # a ping. Treating it as a lost connection keeps the loop alive.
        # tests/integration/test_websocket_close_bug.py reproduces it.
        return "connection aborted by trio-websocket"
    return UNEXPECTED


class _RateLimitedLog:
    """Logs the first occurrence, then at most one line per `interval` with a suppressed count."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._suppressed = 0

    def __call__(self, emit: Callable[[str], None], message: str) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" (+{self._suppressed} similar suppressed)"
        self._last, self._suppressed = now, 0
        emit(message)


class _Connection:
    """One WebSocket session of a feed. Two overlap only while one hands over to the next."""

    def __init__(self, adapter: VenueAdapter, generation: int, garbage: GarbageLimit) -> None:
        self.adapter = adapter
        self.generation = generation
        # Symbols whose book this connection currently supplies to the aggregator.
        self.owned: set[str] = set()
        # Set once this connection is being replaced; the feed then opens the next one.
        self.retiring = False
        self.handed_over = trio.Event()
        # Set when the feed's loop should move on: this connection retires or has ended.
        self.released = trio.Event()
        self.ended: ConnectionEnded | None = None
        self.nursery: trio.Nursery | None = None
        self._garbage = garbage
        self._garbage_times: collections.deque[float] = collections.deque()

    def note_garbage(self) -> None:
        """Count one malformed message; raise once the garbage limit is passed."""
        now = time.monotonic()
        times = self._garbage_times
        times.append(now)
        while times and now - times[0] > self._garbage.window:
            times.popleft()
        if len(times) > self._garbage.messages:
            raise TooMuchGarbageError(
                f"{len(times)} malformed messages within {self._garbage.window:g}s"
            )


class Feed:
    """Runs one venue connection for a set of symbols, forever, until cancelled."""

    def __init__(
        self,
        adapter: VenueAdapter,
        base_url: str,
        events: trio.MemorySendChannel[BookEvent],
        *,
        liveness_timeout: float | None = None,
        backoff: Backoff | None = None,
        garbage_limit: GarbageLimit | None = None,
        rotate_after: float | None = None,
        handover_timeout: float = HANDOVER_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self.adapter = adapter
        self.url = adapter.connect_url(base_url)
        self.liveness_timeout = liveness_timeout or adapter.default_liveness_timeout
        self.backoff = backoff or Backoff()
        self.garbage_limit = garbage_limit or GarbageLimit()
        age = adapter.max_connection_age
        default_rotation = None if age is None else max(age - ROTATE_MARGIN, age / 2)
        self.rotate_after = rotate_after or default_rotation
        self.handover_timeout = handover_timeout
        self.connect_timeout = connect_timeout
        self.stats = FeedStats(adapter.name)
        self._events = events
        self._rng = rng or random.Random()
        self._malformed_log = _RateLimitedLog()
        self._error_log = _RateLimitedLog()
        self._generation = 0
        # Which connection supplies each symbol: the newest one that has delivered it.
        self._owners: dict[str, _Connection] = {}

    @property
    def venue(self) -> str:
        return self.adapter.name

    def _set_state(self, state: FeedState, detail: str = "") -> None:
        if state is not self.stats.state:
            self.stats.state = state
            suffix = f" ({detail})" if detail else ""
            log.info("%s: %s%s [%s]", self.venue, state.value, suffix, self.stats.summary())

    def _is_current(self, connection: _Connection) -> bool:
        return connection.generation == self._generation

    async def run(self) -> None:
        failures = 0
        async with trio.open_nursery() as connections:
            while True:
                self._generation += 1
                if self._generation > 1:
                    self.stats.reconnects += 1
                connection = _Connection(
                    self.adapter.for_new_connection(), self._generation, self.garbage_limit
                )
                self._set_state(FeedState.CONNECTING, self.url)
                started = time.monotonic()
                connections.start_soon(self._run_connection, connection)
                await connection.released.wait()
                ended = connection.ended
                if ended is None or ended.orderly:
                    # Retiring (it goes on until its successor is live) or asked to go:
                    # the venue wants us back at once, so no backoff.
                    failures = 0
                    continue
                if ended.stale:
                    self._set_state(FeedState.STALE, ended.reason)
                if time.monotonic() - started >= self.backoff.stable_after:
                    failures = 0
                failures += 1
                delay = self.backoff.delay(failures, self._rng)
                self._set_state(FeedState.BACKING_OFF, f"{ended.reason}; retry in {delay:.1f}s")
                await trio.sleep(delay)

    async def _run_connection(self, connection: _Connection) -> None:
        try:
            ended = await self._connect_once(connection)
            connection.ended = ended
            if connection.retiring:
                log.info("%s: previous connection closed (%s)", self.venue, ended.reason)
            await self._report_down(connection, ended.reason)
        finally:
            connection.released.set()

    async def _connect_once(self, connection: _Connection) -> ConnectionEnded:
        """Run one connection to its end; say why it ended. Never raises but Cancelled."""
        try:
            async with open_client_websocket(
                self.url,
                connect_timeout=self.connect_timeout,
                disconnect_timeout=DISCONNECT_TIMEOUT,
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=MAX_MESSAGE_SIZE,
            ) as ws:
                try:
                    await self._session(connection, ws)
                except BaseException as exc:
                    # Out of the book now, not after the close handshake.
                    cause = _main_cause(exc)
                    if cause is not None:
                        await self._report_down(connection, _why_connection_ended(cause))
                    raise
        except BaseException as exc:
            leaf = _main_cause(exc)
            if leaf is None:
                # We are being cancelled: pass on the cancellation alone, not the errors
                # that closing the connection produced beside it.
                if isinstance(exc, BaseExceptionGroup):
                    cancelled, _rest = exc.split(trio.Cancelled)
                    if cancelled is not None:
                        raise cancelled from None
                raise
            reason = _why_connection_ended(leaf)
            if reason == UNEXPECTED:
                log.error("%s: unexpected error; reconnecting", self.venue, exc_info=exc)
            orderly = isinstance(leaf, (_ReconnectNow, _HandedOver))
            return ConnectionEnded(reason, orderly, stale=isinstance(leaf, StaleFeedError))
        return ConnectionEnded("connection ended", orderly=False)

    async def _session(
        self, connection: _Connection, ws: trio_websocket.WebSocketConnection
    ) -> None:
        adapter = connection.adapter
        for message in adapter.subscribe_messages():
            await ws.send_message(message)
        if self._is_current(connection):
            self._set_state(FeedState.SUBSCRIBED)
        async with trio.open_nursery() as nursery:
            connection.nursery = nursery
            if adapter.heartbeat_interval is not None:
                nursery.start_soon(self._heartbeat, ws, adapter)
            if self.rotate_after is not None:
                nursery.start_soon(self._rotate_when_old, connection, self.rotate_after)
            await self._read(connection, ws)

    async def _heartbeat(
        self, ws: trio_websocket.WebSocketConnection, adapter: VenueAdapter
    ) -> None:
        message = adapter.heartbeat_message()
        interval = adapter.heartbeat_interval
        while message is not None and interval is not None:
            await trio.sleep(interval)
            await ws.send_message(message)

    async def _rotate_when_old(self, connection: _Connection, age: float) -> None:
        await trio.sleep(age)
        self._retire(connection, "connection age limit near")

    def _retire(self, connection: _Connection, reason: str) -> None:
        """Start replacing `connection`: the feed opens the next one, this one keeps
        serving until that one has taken over every symbol (or the handover times out)."""
        if connection.retiring:
            return
        connection.retiring = True
        self.stats.handovers += 1
        log.info("%s: replacing the connection (%s)", self.venue, reason)
        assert connection.nursery is not None
        connection.nursery.start_soon(self._hand_over, connection, reason)
        connection.released.set()

    async def _hand_over(self, connection: _Connection, reason: str) -> None:
        if connection.owned:
            with trio.move_on_after(self.handover_timeout):
                await connection.handed_over.wait()
            if not connection.handed_over.is_set():
                raise _ReconnectNow(f"{reason}; the new connection was not live in time")
        raise _HandedOver

    async def _read(self, connection: _Connection, ws: trio_websocket.WebSocketConnection) -> None:
        adapter, stats, send = connection.adapter, self.stats, self._events.send
        timeout = self.liveness_timeout
        while True:
            with trio.move_on_after(timeout) as wait:
                message = await ws.get_message()
            if wait.cancelled_caught:
                stats.stalls += 1
                raise StaleFeedError(f"no message for {timeout:g}s")
            recv_ns = time.time_ns()
            stats.messages += 1
            stats.last_message_ns = recv_ns
            try:
                events = adapter.handle_message(message, recv_ns)
            except MalformedMessageError as exc:
                stats.malformed += 1
                if isinstance(exc, CrossedBookError):
                    stats.crossed += 1
                self._malformed_log(
                    log.warning,
                    f"{self.venue}: malformed message ({exc}): {str(message)[:SAMPLE_CHARS]!r}",
                )
                try:
                    connection.note_garbage()
                except TooMuchGarbageError:
                    stats.garbage_recycles += 1
                    raise
                continue
            for event in events:
                if isinstance(event, VenueBook):
                    if self._take(connection, event.symbol):
                        await send(event)
                elif isinstance(event, ReconnectRequested):
                    self._retire(connection, event.reason)
                elif isinstance(event, VenueError):
                    stats.venue_errors += 1
                    self._error_log(log.warning, f"{self.venue}: {event.message}")
                elif isinstance(event, Resync):
                    await self._resync(connection, ws, event)
                elif isinstance(event, Subscribed):
                    log.debug("%s: subscribed to %s", self.venue, event.symbol)

    async def _resync(
        self, connection: _Connection, ws: trio_websocket.WebSocketConnection, event: Resync
    ) -> None:
        """Take the symbol out of the merged book and ask the venue for a fresh snapshot.

        A venue that breaks continuity over and over counts against the garbage limit, so
        it gets a fresh connection (with backoff) rather than an endless resubscribe loop.
        """
        self.stats.resyncs += 1
        log.warning("%s: resyncing %s: %s", self.venue, event.symbol, event.reason)
        await self._report_symbol_down(connection, event.symbol, f"resync: {event.reason}")
        messages = connection.adapter.resubscribe_messages(event.symbol)
        if not messages:
            raise _ResyncByReconnect(f"{event.symbol}: {event.reason}")
        for message in messages:
            await ws.send_message(message)
        try:
            connection.note_garbage()
        except TooMuchGarbageError:
            self.stats.garbage_recycles += 1
            raise

    def _take(self, connection: _Connection, symbol: str) -> bool:
        """Whether `connection`'s book for `symbol` goes to the aggregator: yes unless a newer
        connection already supplies that symbol."""
        owner = self._owners.get(symbol)
        if owner is connection:
            return True
        if owner is not None:
            if owner.generation > connection.generation:
                return False  # a retiring connection's late data: the successor has it
            owner.owned.discard(symbol)
            if owner.retiring and not owner.owned:
                owner.handed_over.set()
        self._owners[symbol] = connection
        connection.owned.add(symbol)
        if self._is_current(connection):
            self._set_state(FeedState.LIVE)
        return True

    async def _report_symbol_down(self, connection: _Connection, symbol: str, reason: str) -> None:
        """One symbol of a live connection leaves the merged book until its book is back."""
        if symbol not in connection.owned:
            return
        connection.owned.discard(symbol)
        del self._owners[symbol]
        if connection.retiring and not connection.owned:
            connection.handed_over.set()  # nothing left to hand over
        await self._events.send(VenueDown(self.venue, (symbol,), reason, time.time_ns()))

    async def _report_down(self, connection: _Connection, reason: str) -> None:
        if not connection.owned:
            return
        symbols = tuple(sorted(connection.owned))
        connection.owned.clear()
        for symbol in symbols:
            del self._owners[symbol]
        log.warning("%s: down for %s: %s", self.venue, ", ".join(symbols), reason)
        await self._events.send(VenueDown(self.venue, symbols, reason, time.time_ns()))
