"""The one connect / subscribe / read / reconnect loop that drives every venue adapter.

A feed never dies because of what a venue does: connection errors, handshake failures,
stalls and malformed messages are logged and counted, the venue is reported down to the
aggregator at once, and the loop reconnects with capped exponential backoff and jitter.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable

import attrs
import trio
import trio_websocket

from aggtrio.exception_groups import single_leaf
from aggtrio.model import BookEvent, VenueBook, VenueDown
from aggtrio.venues.base import (
    MalformedMessageError,
    ReconnectRequested,
    Subscribed,
    VenueAdapter,
    VenueError,
)

log = logging.getLogger(__name__)

# A queue of a few messages keeps trio-websocket's reader (and so its ping replies) running
# while we hand a message on, and sidesteps its close-with-unread-messages bug (STACK.md).
MESSAGE_QUEUE_SIZE = 16
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 2.0
SAMPLE_CHARS = 200


class FeedState(enum.Enum):
    CONNECTING = "connecting"
    SUBSCRIBED = "subscribed"
    LIVE = "live"
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


@attrs.define
class FeedStats:
    """What an operator wants to know about one venue connection."""

    venue: str
    state: FeedState = FeedState.CONNECTING
    messages: int = 0
    malformed: int = 0
    venue_errors: int = 0
    reconnects: int = 0
    last_message_ns: int = 0


@attrs.frozen(slots=True)
class ConnectionEnded:
    reason: str
    # The venue asked for the reconnect (maintenance, age limit): no backoff is due.
    orderly: bool


class StaleFeedError(Exception):
    """Nothing arrived within the liveness timeout."""


class _ReconnectNow(Exception):
    """The venue asked for a reconnect; raised out of the read loop to close the connection."""


UNEXPECTED = "unexpected error"


def _why_connection_ended(exc: BaseException) -> str | None:
    """A one-line reason for the log, or None for what must propagate (our cancellation)."""
    if isinstance(exc, _ReconnectNow):
        return f"reconnect requested: {exc}"
    if isinstance(exc, StaleFeedError):
        return f"stale: {exc}"
    if isinstance(exc, trio_websocket.ConnectionClosed):
        return f"connection closed ({exc.reason})"
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"handshake rejected with HTTP {exc.status_code}"
    if isinstance(exc, trio_websocket.HandshakeError):
        cause = exc.__cause__ or exc.__context__
        return f"connection failed: {cause or type(exc).__name__}"
    if isinstance(exc, (OSError, trio.BrokenResourceError)):
        return f"connection failed: {exc or type(exc).__name__}"
    if isinstance(exc, trio.Cancelled):
        if trio.current_effective_deadline() != -float("inf"):
            # trio-websocket can leak a Cancelled that is not ours when a close races a
            # pending ping (STACK.md); swallowing only that one keeps the loop alive.
            return "connection aborted by trio-websocket"
        return None
    if isinstance(exc, Exception):
        return UNEXPECTED
    return None


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
        rng: random.Random | None = None,
    ) -> None:
        self.adapter = adapter
        self.url = adapter.connect_url(base_url)
        self.liveness_timeout = liveness_timeout or adapter.default_liveness_timeout
        self.backoff = backoff or Backoff()
        self.stats = FeedStats(adapter.name)
        self._events = events
        self._rng = rng or random.Random()
        self._malformed_log = _RateLimitedLog()
        self._symbols_live: set[str] = set()

    @property
    def venue(self) -> str:
        return self.adapter.name

    def _set_state(self, state: FeedState, detail: str = "") -> None:
        if state is not self.stats.state:
            self.stats.state = state
            log.info("%s: %s%s", self.venue, state.value, f" ({detail})" if detail else "")

    async def run(self) -> None:
        failures = 0
        while True:
            self._set_state(FeedState.CONNECTING, self.url)
            started = time.monotonic()
            ended = await self._connect_once()
            reason = ended.reason
            await self._report_down(reason)
            self.stats.reconnects += 1
            if ended.orderly:
                failures = 0
                continue  # the venue asked for it: come straight back
            if time.monotonic() - started >= self.backoff.stable_after:
                failures = 0
            failures += 1
            delay = self.backoff.delay(failures, self._rng)
            self._set_state(FeedState.BACKING_OFF, f"{reason}; retry in {delay:.1f}s")
            await trio.sleep(delay)

    async def _connect_once(self) -> ConnectionEnded:
        """Run one connection to its end; say why it ended. Never raises but Cancelled."""
        try:
            async with trio_websocket.open_websocket_url(
                self.url,
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=MAX_MESSAGE_SIZE,
                receive_buffer_size=None,
                connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=DISCONNECT_TIMEOUT,
            ) as ws:
                await self._session(ws)
        except BaseException as exc:
            leaf = single_leaf(exc)
            reason = _why_connection_ended(leaf)
            if reason is None:
                raise
            if reason == UNEXPECTED:
                log.error("%s: unexpected error; reconnecting", self.venue, exc_info=exc)
            return ConnectionEnded(reason, orderly=isinstance(leaf, _ReconnectNow))
        return ConnectionEnded("connection ended", orderly=False)

    async def _session(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.adapter.reset()
        for message in self.adapter.subscribe_messages():
            await ws.send_message(message)
        self._set_state(FeedState.SUBSCRIBED)
        async with trio.open_nursery() as nursery:
            if self.adapter.heartbeat_interval is not None:
                nursery.start_soon(self._heartbeat, ws, self.adapter.heartbeat_interval)
            await self._read(ws)

    async def _heartbeat(self, ws: trio_websocket.WebSocketConnection, interval: float) -> None:
        message = self.adapter.heartbeat_message()
        while message is not None:
            await trio.sleep(interval)
            await ws.send_message(message)

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        adapter, stats, send = self.adapter, self.stats, self._events.send
        timeout = self.liveness_timeout
        while True:
            with trio.move_on_after(timeout) as wait:
                message = await ws.get_message()
            if wait.cancelled_caught:
                raise StaleFeedError(f"no message for {timeout:g}s")
            recv_ns = time.time_ns()
            stats.messages += 1
            stats.last_message_ns = recv_ns
            try:
                events = adapter.handle_message(message, recv_ns)
            except MalformedMessageError as exc:
                stats.malformed += 1
                self._malformed_log(
                    log.warning,
                    f"{self.venue}: malformed message ({exc}): {str(message)[:SAMPLE_CHARS]!r}",
                )
                continue
            for event in events:
                if isinstance(event, VenueBook):
                    if event.symbol not in self._symbols_live:
                        self._symbols_live.add(event.symbol)
                        self._set_state(FeedState.LIVE)
                    await send(event)
                elif isinstance(event, ReconnectRequested):
                    raise _ReconnectNow(event.reason)
                elif isinstance(event, VenueError):
                    stats.venue_errors += 1
                    log.warning("%s: %s", self.venue, event.message)
                elif isinstance(event, Subscribed):
                    log.debug("%s: subscribed to %s", self.venue, event.symbol)

    async def _report_down(self, reason: str) -> None:
        if not self._symbols_live:
            return
        symbols = tuple(sorted(self._symbols_live))
        self._symbols_live.clear()
        log.warning("%s: down for %s: %s", self.venue, ", ".join(symbols), reason)
        await self._events.send(VenueDown(self.venue, symbols, reason, time.time_ns()))
