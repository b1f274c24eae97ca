"""A local OKX v5 public WebSocket: the ``books`` channel (snapshot, then 100 ms deltas).

Speaks what ``wss://ws.okx.com:8443/ws/v5/public`` does (OKX API v5 docs):

* Path ``/ws/v5/public`` (any other path: HTTP 404).
* ``{"op": "subscribe" | "unsubscribe", "args": [{"channel": "books", "instId": "ETH-BTC"}]}``
  (optional ``"id"``, echoed): one ack per channel, ``{"event": "subscribe", "arg": {…},
  "connId": "…"}``. Errors are ``{"event": "error", "code": …, "msg": …, "connId": …}``:
  60012 for a request that is not JSON, 60019 for an unknown ``op``, 60013 for bad
  ``args``, 60018 for a channel or ``instId`` that does not exist.
* Per subscription: ``action: "snapshot"`` with up to 400 levels (the simulator's depth),
  ``prevSeqId`` -1; then ``action: "update"`` with the levels changed since the last push,
  at most every ``push_interval`` (100 ms), ``prevSeqId`` = the previous ``seqId``. Levels are
  ``[px, sz, "0", orders]`` with trailing zeros trimmed, as OKX prints them; a deleted level
  has size ``"0"``. ``checksum`` is always 0. SeqIds belong to the instrument, so every
  connection sees the same ones; :meth:`OkxSimulator.reset_sequence` restarts them lower,
  as maintenance does.
* No change for ``keepalive_interval`` (OKX: ~60 s): an update with empty sides and
  ``seqId == prevSeqId``.
* The text ``ping`` is answered ``pong``; a connection that sends nothing for
  ``idle_timeout`` (30 s) is closed with 4004.
* :meth:`OkxSimulator.send_notice` sends the 64008 service-upgrade notice and closes the
  connections after a grace period (OKX: 60 s).
* Faults: with ``reject_subscriptions()`` a subscribe gets error 64007; with
  ``ignore_heartbeats()`` ``ping`` gets no ``pong``; :meth:`DeltaVenue.inject` drops,
  repeats or reorders one delta (``checksum`` is 0, so there is no bad-checksum fault).

(?) Not documented: whether a subscribe that names a good and a bad ``instId`` acks the good
one (done here) or fails as a whole; the exact ``msg`` texts, which follow OKX's error table.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
import uuid
import zlib
from typing import Any, ClassVar

import orjson
import trio

from aggtrio.simulator.delta import DeltaSession, DeltaVenue, LevelChanges
from aggtrio.simulator.market import Market, trim_zeros
from aggtrio.simulator.venue import Channel, Client, Rendered, Session, TextLevels
from aggtrio.symbols import normalize_symbol, parse_venue_pair, venue_pair

logger = logging.getLogger(__name__)

PATH = "/ws/v5/public"
CHANNEL = "books"
SERVICE_UPGRADE = "64008"
SERVICE_UPGRADE_TEXT = "The connection will soon be closed for a service upgrade. Please reconnect."
IDLE_CLOSE_CODE = 4004

WireLevel = list[str]


def inst_id(symbol: str) -> str:
    """``inst_id("ethbtc") == "ETH-BTC"``."""
    return venue_pair("okx", symbol)


def parse_inst_id(text: str) -> str | None:
    """The canonical symbol of an OKX spot instId, None unless spelled exactly as OKX does."""
    return parse_venue_pair("okx", text)


def _orders(price: str, size: str) -> str:
    # The number of orders at a level is not modelled; a stable, plausible count.
    return str(zlib.crc32(f"{price}:{size}".encode()) % 12 + 1)


def _wire_levels(levels: TextLevels) -> list[WireLevel]:
    wired: list[WireLevel] = []
    for price, size in levels:
        if size == "0":
            wired.append([trim_zeros(price), "0", "0", "0"])
        else:
            wired.append([trim_zeros(price), trim_zeros(size), "0", _orders(price, size)])
    return wired


def _spoiled_levels(side: object) -> object:
    """A side spoiled by a malformed kind, in OKX's level shape where it still is a list."""
    if not isinstance(side, list):
        return side
    return [
        [*level, "0", "1"] if isinstance(level, list) and len(level) == 2 else level
        for level in side
    ]


class _RequestError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


class OkxSession(DeltaSession):
    """One OKX connection: its ``books`` subscriptions and its idle timer."""

    venue: OkxSimulator

    def __init__(self, venue: OkxSimulator) -> None:
        super().__init__(venue)
        self.conn_id = uuid.uuid4().hex[:8]
        # Per subscribed symbol: the seqId of the last book message sent on this connection.
        self._sent_seq: dict[str, int] = {}
        self._heard_at = trio.current_time()

    # -- protocol ------------------------------------------------------------------------

    async def opened(self, client: Client) -> None:
        self._heard_at = trio.current_time()
        client.start_soon(lambda: self._close_when_idle(client))

    async def received(self, client: Client, message: str | bytes) -> None:
        self._heard_at = trio.current_time()
        if message == "ping":
            if self.venue.ignoring_heartbeats:
                self.venue.heartbeats_ignored += 1
                return
            await client.send("pong")
            return
        request_id: object = None
        try:
            try:
                request = orjson.loads(message)
            except orjson.JSONDecodeError:
                request = None
            if not isinstance(request, dict):
                text = message if isinstance(message, str) else message.decode(errors="replace")
                raise _RequestError("60012", f"Invalid request: {text[:200]}")
            request_id = request.get("id")
            await self._handle(client, request, request_id)
        except _RequestError as exc:
            await client.send(self._error(exc.code, exc.msg, request_id))

    async def _handle(self, client: Client, request: dict[str, Any], request_id: object) -> None:
        op = request.get("op")
        if op not in ("subscribe", "unsubscribe"):
            raise _RequestError("60019", f"Invalid op: {op}")
        args = request.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, dict) for a in args):
            raise _RequestError("60013", "Invalid args")
        if op == "subscribe":
            self.venue.subscribe_requests += 1
            if self.venue.rejecting_subscriptions:
                self.venue.subscriptions_rejected += 1
                raise _RequestError(
                    "64007",
                    "Operation subscribe failed due to WebSocket internal error. "
                    "Please try again later.",
                )
        for arg in args:
            channel, inst = arg.get("channel"), arg.get("instId")
            symbol = parse_inst_id(inst) if isinstance(inst, str) else None
            if channel != CHANNEL or symbol is None:
                await client.send(
                    self._error(
                        "60018",
                        f"Wrong URL or channel:{channel},instId:{inst} doesn't exist. Please use "
                        "the correct URL, channel and parameters referring to API document.",
                        request_id,
                    )
                )
                continue
            reply = self._reply(op, {"channel": CHANNEL, "instId": inst}, request_id)
            if op == "unsubscribe":
                self.unsubscribe(inst)
                self._sent_seq.pop(symbol, None)
                await client.send(reply)
                continue
            # The ack goes out before the channel task starts, so it always precedes the data.
            if not await client.send(reply):
                return
            self.subscribe(client, Channel(inst, symbol, self.venue.depth))

    def _reply(self, event: str, arg: dict[str, str], request_id: object) -> str:
        body: dict[str, Any] = {"event": event, "arg": arg, "connId": self.conn_id}
        if request_id is not None:
            body = {"id": request_id, **body}
        return orjson.dumps(body).decode()

    def _error(self, code: str, msg: str, request_id: object) -> str:
        body: dict[str, Any] = {"event": "error", "code": code, "msg": msg, "connId": self.conn_id}
        if request_id is not None:
            body = {"id": request_id, **body}
        return orjson.dumps(body).decode()

    async def _close_when_idle(self, client: Client) -> None:
        venue = self.venue
        while True:
            await trio.sleep_until(self._heard_at + venue.idle_timeout)
            if venue.stalled:
                # Nothing the client sent could be read meanwhile: not its silence.
                await venue.wait_unstalled()
                self._heard_at = trio.current_time()
                continue
            if trio.current_time() >= self._heard_at + venue.idle_timeout:
                logger.info("okx: nothing received for %ss, closing", venue.idle_timeout)
                await client.close(IDLE_CLOSE_CODE, f"No data received in {venue.idle_timeout:g}s")
                return

    # -- book messages -------------------------------------------------------------------

    def _book_message(
        self, channel: Channel, action: str, *, bids: object, asks: object, prev: int, seq: int
    ) -> dict[str, Any]:
        return {
            "arg": {"channel": CHANNEL, "instId": channel.name},
            "action": action,
            "data": [
                {
                    "asks": asks,
                    "bids": bids,
                    "ts": str(time.time_ns() // 1_000_000),
                    "checksum": 0,
                    "prevSeqId": prev,
                    "seqId": seq,
                }
            ],
        }

    def snapshot_message(self, channel: Channel, rendered: Rendered) -> str:
        seq = self._sent_seq[channel.symbol] = rendered.update_id
        message = self._book_message(
            channel,
            "snapshot",
            bids=_wire_levels(rendered.bids),
            asks=_wire_levels(rendered.asks),
            prev=-1,
            seq=seq,
        )
        return orjson.dumps(message).decode()

    def update_message(
        self, channel: Channel, changes: LevelChanges, rendered: Rendered, *, bad_checksum: bool
    ) -> str:
        prev = self._sent_seq[channel.symbol]
        seq = self._sent_seq[channel.symbol] = rendered.update_id
        message = self._book_message(
            channel,
            "update",
            bids=_wire_levels(changes.bids),
            asks=_wire_levels(changes.asks),
            prev=prev,
            seq=seq,
        )
        return orjson.dumps(message).decode()

    def keepalive_message(self, channel: Channel) -> str:
        seq = self._sent_seq[channel.symbol]
        return orjson.dumps(
            self._book_message(channel, "update", bids=[], asks=[], prev=seq, seq=seq)
        ).decode()

    def payload(self, channel: Channel, rendered: Rendered) -> dict[str, Any]:
        return {"bids": rendered.bids, "asks": rendered.asks}

    def envelope(self, channel: Channel, payload: dict[str, Any]) -> object:
        # A snapshot carrying the spoiled sides as they are (a missing side stays missing).
        seq = self._sent_seq.get(channel.symbol, 0)
        message = self._book_message(channel, "snapshot", bids=[], asks=[], prev=-1, seq=seq)
        body = message["data"][0]
        for side in ("asks", "bids"):
            if side in payload:
                body[side] = _spoiled_levels(payload[side])
            else:
                del body[side]
        return message


class OkxSimulator(DeltaVenue):
    """OKX v5 public ``books`` channels.

    ``depth``: levels per side of the venue's book and of each snapshot (OKX: 400).
    ``updates_per_second``: average rate of book changes per symbol. ``push_interval``:
    seconds between updates of one subscription (OKX: 0.1). ``keepalive_interval``: seconds
    without a change before a keep-alive update (OKX: about 60). ``idle_timeout``: seconds a
    client may send nothing before it is disconnected (OKX: 30). ``notice_grace``: seconds
    between the 64008 notice and the close (OKX: 60).
    """

    name = "okx"
    supported_faults: ClassVar[tuple[str, ...]] = ("gap", "duplicate", "reorder")
    push_interval: float  # never None: OKX batches every subscription's changes

    def __init__(
        self,
        market: Market,
        *,
        seed: int | None = None,
        depth: int = 400,
        updates_per_second: float = 20.0,
        push_interval: float = 0.1,
        keepalive_interval: float = 60.0,
        idle_timeout: float = 30.0,
        notice_grace: float = 60.0,
    ) -> None:
        if push_interval <= 0 or keepalive_interval <= 0 or idle_timeout <= 0:
            raise ValueError("intervals and timeouts must be positive")
        super().__init__(market, seed=seed, depth=depth, updates_per_second=updates_per_second)
        self.push_interval = push_interval
        self.keepalive_interval = keepalive_interval
        self.idle_timeout = idle_timeout
        self.notice_grace = notice_grace

    def open_session(self, path: str) -> Session | int:
        if urllib.parse.urlsplit(path).path != PATH:
            return 404
        return OkxSession(self)

    async def send_notice(self, grace: float | None = None) -> None:
        """Warn every connection of a service upgrade (64008); close those still open after
        ``grace`` seconds (default ``notice_grace``)."""

        def notice(client: Client) -> str:
            session = client.session
            conn_id = session.conn_id if isinstance(session, OkxSession) else ""
            return orjson.dumps(
                {
                    "event": "notice",
                    "code": SERVICE_UPGRADE,
                    "msg": SERVICE_UPGRADE_TEXT,
                    "connId": conn_id,
                }
            ).decode()

        await self.notify_and_close(notice, self.notice_grace if grace is None else grace)

    def reset_sequence(self, symbol: str, to: int = 0) -> None:
        """Restart ``symbol``'s seqIds from ``to`` at its next change, as OKX may after
        maintenance: that update's ``seqId`` is below its ``prevSeqId``."""
        if to < 0:
            raise ValueError("seqIds are never negative")
        self.symbol_state(normalize_symbol(symbol)).update_id = to
