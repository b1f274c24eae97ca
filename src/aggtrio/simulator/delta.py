"""What the simulators of snapshot-then-delta venues share (Kraken, Coinbase, OKX, Bybit).

Each subscription on a connection first gets a snapshot of the symbol's book, then, on
every change, only the levels that changed since what this connection was last sent: new
or changed levels with their new amount, and levels that left the book (or the channel's
depth window) with amount ``"0"``. So a client that applies every message holds exactly
the venue's top ``depth`` levels, and :meth:`SimulatedVenue.book` is what it should hold.

A :class:`DeltaVenue` can also break continuity on purpose, once per subscription, with
:meth:`DeltaVenue.inject`: drop a delta (``gap``), send one twice (``duplicate``), swap two
(``reorder``), or send a wrong checksum (``bad-checksum``, venues that send checksums).
The venue's own book moves on regardless; the client must notice, resync and catch up.
"""

from __future__ import annotations

import abc
import logging
import math
from typing import ClassVar

import attrs
import trio

from aggtrio.simulator.venue import Channel, Client, Rendered, Session, SimulatedVenue, TextLevels
from aggtrio.symbols import normalize_symbol

logger = logging.getLogger(__name__)

# Amount text a delta uses to delete a level; each venue may print it its own way.
DELETED = "0"

SEQUENCE_FAULTS = ("gap", "duplicate", "reorder", "bad-checksum")
"""What :meth:`DeltaVenue.inject` can do to one subscription's next delta."""


@attrs.frozen(slots=True)
class LevelChanges:
    """The levels that changed since the last message, per side, as wire text.

    Deletions (amount :data:`DELETED`) come first on each side, so a client that caps its
    book at the channel's depth never drops a level it should keep.
    """

    bids: TextLevels
    asks: TextLevels

    def __bool__(self) -> bool:
        return bool(self.bids or self.asks)


def _side_changes(old: dict[str, str], new: TextLevels) -> TextLevels:
    current = dict(new)
    deleted = tuple((price, DELETED) for price in old if price not in current)
    changed = tuple((price, qty) for price, qty in new if old.get(price) != qty)
    return deleted + changed


class BookDiff:
    """The book one connection's client holds for one subscription: what it was last sent."""

    __slots__ = ("_asks", "_bids")

    def __init__(self) -> None:
        self._bids: dict[str, str] = {}
        self._asks: dict[str, str] = {}

    def snapshot(self, rendered: Rendered) -> None:
        """The client now holds exactly `rendered` (a snapshot went out)."""
        self._bids, self._asks = dict(rendered.bids), dict(rendered.asks)

    def changes(self, rendered: Rendered) -> LevelChanges:
        """What turns the held book into `rendered`; the client is then taken to hold it."""
        changes = LevelChanges(
            _side_changes(self._bids, rendered.bids), _side_changes(self._asks, rendered.asks)
        )
        self.snapshot(rendered)
        return changes


class DeltaSession(Session):
    """A connection of a delta venue: runs one snapshot-then-delta loop per subscription.

    Subclasses speak the venue's protocol in :meth:`received` and call :meth:`subscribe` /
    :meth:`unsubscribe`; they format messages in :meth:`snapshot_message` and
    :meth:`update_message` (which also advances the venue's sequence numbers, if any).
    For malformed messages (``SimulatedVenue.send_malformed``), :meth:`payload` gives the
    book as ``{"bids": [[price, amount], …], "asks": […]}`` and :meth:`envelope` turns that
    into a snapshot-shaped message of the venue, passing spoiled values through as they are.
    """

    def __init__(self, venue: DeltaVenue) -> None:
        self.venue = venue
        self._channels: dict[str, Channel] = {}
        self._loops: dict[str, trio.CancelScope] = {}
        # Per symbol: the fault to apply to that subscription's next delta.
        self.pending_faults: dict[str, str] = {}

    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    def subscribed(self, symbol: str) -> Channel | None:
        return next((c for c in self._channels.values() if c.symbol == symbol), None)

    def subscribe(self, client: Client, channel: Channel) -> None:
        """Start (or restart, with a fresh snapshot) the data loop of `channel`."""
        self.unsubscribe(channel.name)
        scope = self._loops[channel.name] = trio.CancelScope()
        self._channels[channel.name] = channel

        async def run() -> None:
            with scope:
                await self._channel_loop(client, channel)

        client.start_soon(run)

    def unsubscribe(self, name: str) -> bool:
        """Stop the data loop of the channel called `name`; False if there was none."""
        scope = self._loops.pop(name, None)
        self._channels.pop(name, None)
        if scope is not None:
            scope.cancel()
        return scope is not None

    @abc.abstractmethod
    def snapshot_message(self, channel: Channel, rendered: Rendered) -> str:
        """The wire text of a snapshot of `rendered`."""

    @abc.abstractmethod
    def update_message(
        self, channel: Channel, changes: LevelChanges, rendered: Rendered, *, bad_checksum: bool
    ) -> str:
        """The wire text of one delta (`rendered` is the book after it)."""

    def keepalive_message(self, channel: Channel) -> str | None:
        """What a subscription gets after :attr:`DeltaVenue.keepalive_interval` seconds
        without a change (OKX: an update with no levels); None: nothing."""
        return None

    async def _channel_loop(self, client: Client, channel: Channel) -> None:
        """Snapshot, then a delta on every change, or on the venue's beat
        (:attr:`DeltaVenue.push_interval`) with all of a beat's changes; a keep-alive after
        :attr:`DeltaVenue.keepalive_interval` without any, where the venue sends one."""
        venue = self.venue
        state = venue.symbol_state(channel.symbol)
        await venue.wait_unmuted()
        rendered = venue.render(state, channel.depth)
        diff = BookDiff()
        diff.snapshot(rendered)
        if not await client.send_data(channel, rendered, self.snapshot_message(channel, rendered)):
            return
        last_version = rendered.version
        pushed_at = next_push = trio.current_time()
        quiet_for = venue.keepalive_interval or math.inf
        held: str | None = None  # a delta kept back by a "reorder" fault
        while True:
            # Conflates: a slow client gets one delta to the newest book, never a backlog.
            changed = state.changed
            if state.version == last_version:
                with trio.move_on_at(pushed_at + quiet_for):
                    await changed.wait()
                if state.version == last_version:
                    keepalive = self.keepalive_message(channel)
                    if keepalive is not None and not await client.send_data(
                        channel, rendered, keepalive
                    ):
                        return
                    pushed_at = trio.current_time()
                continue
            if venue.push_interval is not None:
                now = trio.current_time()
                while next_push <= now:
                    next_push += venue.push_interval
                await trio.sleep_until(next_push)
            # Muted, the deltas accumulate into the one that goes out on unmute.
            await venue.wait_unmuted()
            rendered = venue.render(state, channel.depth)
            last_version = rendered.version
            changes = diff.changes(rendered)
            if not changes:
                continue
            pushed_at = trio.current_time()
            fault = self.pending_faults.pop(channel.symbol, None)
            message = self.update_message(
                channel, changes, rendered, bad_checksum=fault == "bad-checksum"
            )
            if fault in ("gap", "reorder"):
                venue.note_sent(channel.symbol, rendered)  # the venue's book moved on
                if fault == "reorder":
                    held = message
                continue
            sent = await client.send_data(channel, rendered, message)
            if sent and fault == "duplicate":
                sent = await client.send_data(channel, rendered, message)
            if sent and held is not None:
                sent = await client.send_data(channel, rendered, held)
                held = None
            if not sent:
                return


class OfflineSubscription:
    """One subscription's data messages without a connection, for recordings made without
    serving (the ingest benchmark; see :class:`~aggtrio.simulator.venue.OfflineClient`).

    The messages are the session's own (:meth:`DeltaSession.snapshot_message` and
    :meth:`DeltaSession.update_message`, with its sequence numbers and checksums), diffed
    by :class:`BookDiff` as the data loop does; the caller moves the venue's books
    (:meth:`SimulatedVenue.step`) and asks for :meth:`update` when the venue would push:
    after every change, or every :attr:`DeltaVenue.push_interval` seconds.
    """

    def __init__(self, session: DeltaSession, channel: Channel) -> None:
        self.session = session
        self.channel = channel
        self._diff = BookDiff()

    def _render(self) -> Rendered:
        venue = self.session.venue
        return venue.render(venue.symbol_state(self.channel.symbol), self.channel.depth)

    def snapshot(self) -> str:
        """The snapshot the subscription starts with (or restarts with, on a resync)."""
        rendered = self._render()
        self._diff.snapshot(rendered)
        self.session.venue.note_sent(self.channel.symbol, rendered)
        return self.session.snapshot_message(self.channel, rendered)

    def update(self) -> str | None:
        """The delta to the venue's book as it is now; None if nothing this channel shows
        changed since the last message (the data loop sends nothing then either)."""
        rendered = self._render()
        changes = self._diff.changes(rendered)
        if not changes:
            return None
        self.session.venue.note_sent(self.channel.symbol, rendered)
        return self.session.update_message(self.channel, changes, rendered, bad_checksum=False)


class DeltaVenue(SimulatedVenue):
    """A simulated venue whose subscriptions are snapshot-then-delta (see the module doc)."""

    # Seconds between one subscription's pushes, each carrying all the changes since the
    # last (OKX: 0.1); None: a delta goes out on every change, as the shared loop does.
    push_interval: float | None = None
    # Seconds without a change after which a subscription gets the session's
    # keepalive_message (OKX: ~60); None: the venue sends nothing while a book is quiet.
    keepalive_interval: float | None = None
    # Which of SEQUENCE_FAULTS this venue can show (bad-checksum needs checksums).
    supported_faults: ClassVar[tuple[str, ...]] = ("gap", "duplicate", "reorder")
    # Subscriptions spoiled by inject(), all kinds (a counter for tests, like the base's).
    faults_injected = 0
    # Which of supported_faults inject_next() uses next.
    _next_fault = 0

    def inject(self, kind: str, symbol: str | None = None) -> int:
        """Spoil the next delta of every open subscription (of `symbol` only, if given) with
        `kind`; returns how many subscriptions will see it."""
        if kind not in self.supported_faults:
            raise ValueError(
                f"{self.name} simulator cannot inject {kind!r} "
                f"(supported: {', '.join(self.supported_faults)})"
            )
        wanted = normalize_symbol(symbol) if symbol is not None else None
        count = 0
        for client in self.open_clients():
            session = client.session
            if not isinstance(session, DeltaSession):
                continue
            for channel in session.channels():
                if wanted in (None, channel.symbol):
                    session.pending_faults[channel.symbol] = kind
                    count += 1
        self.faults_injected += count
        logger.info("%s simulator: injecting %r into %d subscriptions", self.name, kind, count)
        return count

    def inject_next(self) -> str:
        """Inject each of `supported_faults` in turn, one per call; returns the kind."""
        kind = self.supported_faults[self._next_fault % len(self.supported_faults)]
        self._next_fault += 1
        self.inject(kind)
        return kind
