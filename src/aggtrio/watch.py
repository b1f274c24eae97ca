"""``aggtrio watch``: subscribe to a server and show the merged book live, or as JSON lines.

The public entry point is :func:`run_watch`. Everything that decides what the user sees
(:func:`summary_to_json`, :func:`render_book`, :func:`render_view`, :class:`RateWindow`,
:class:`LatencyWindow`) is a pure function or a small value object, so it is tested without
a terminal or a server; :func:`run_watch` only moves bytes and handles failures.

A summary the server sends again unchanged on a quiet symbol (same ``arrival_time``, see
:func:`is_resend`) is neither shown again nor counted in ``count``, the rate or the latency.

Exit codes returned by :func:`run_watch`:

* ``0``: ``count`` summaries were shown, or the output was closed (the reader of a pipe
  went away); nothing is printed then.
* ``1``: any failure at run time, reported as one line on stderr starting with
  ``aggtrio watch:`` (server unreachable, a gRPC status such as NOT_FOUND or
  INVALID_ARGUMENT from the server, connection lost, stream ended by the server).
* A malformed ``server`` address or a ``count`` below 1 raises :class:`ValueError` before
  anything connects (the CLI reports it as a usage error, exit 2).
"""

from __future__ import annotations

import errno
import math
import os
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any, Self, TextIO

import anyio
import orjson
import purerpc
import purerpc.client
import trio
from purerpc.grpc_proto import GRPCProtoSocket
from purerpc.grpclib.connection import GRPCConfiguration
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from aggtrio._proto import orderbook_grpc, orderbook_pb2
from aggtrio.symbols import InvalidSymbolError, normalize_symbol

__all__ = [
    "EXCHANGE_COLOURS",
    "FALLBACK_COLOUR",
    "LatencySnapshot",
    "LatencyWindow",
    "RateWindow",
    "WatchState",
    "exchange_text",
    "fit_depth",
    "is_resend",
    "parse_server_address",
    "render_book",
    "render_header",
    "render_view",
    "run_watch",
    "summary_to_json",
]

PROG = "aggtrio watch"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
STATS_WINDOW_S = 5.0
REDRAW_INTERVAL_S = 0.1  # at most ~10 redraws/s however fast summaries arrive
IDLE_REDRAW_S = 1.0  # redraw a quiet stream anyway so rate and "last update" age stay honest
STALE_AFTER_S = 2.0
MAX_DECIMALS = 8
BOOK_DEPTH = 10
VIEW_CHROME_LINES = 9  # header 3, blank 1, column titles and rule 2, rule/spread/rule 3
EMPTY = "—"

EXCHANGE_COLOURS: dict[str, str] = {
    "binance": "yellow",
    "bitstamp": "green",
    "kraken": "magenta",
    "coinbase": "blue",
    "okx": "bright_white",
    "bybit": "dark_orange",
}
FALLBACK_COLOUR = "cyan"

_NS_PER_S = 1_000_000_000
_NS_PER_MS = 1_000_000


# --------------------------------------------------------------------------------------------
# Address parsing


def parse_server_address(text: str) -> tuple[str, int]:
    """Split ``"HOST:PORT"`` (or ``"[IPv6]:PORT"``) into ``(host, port)``.

    Raises :class:`ValueError` with a one-line reason for anything else.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("server address is empty; expected HOST:PORT")
    if "://" in stripped:
        raise ValueError(f"server address {text!r} has a scheme; expected plain HOST:PORT")
    if stripped.startswith("["):
        close = stripped.find("]")
        if close < 0:
            raise ValueError(f"server address {text!r} has an unclosed '['")
        host = stripped[1:close]
        rest = stripped[close + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"server address {text!r} has no port; expected [HOST]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = stripped.rpartition(":")
        if not sep:
            raise ValueError(f"server address {text!r} has no port; expected HOST:PORT")
        if ":" in host:
            raise ValueError(
                f"server address {text!r} is ambiguous; write IPv6 hosts in brackets, "
                "e.g. [::1]:50051"
            )
    if not host:
        raise ValueError(f"server address {text!r} has an empty host")
    if any(ch.isspace() for ch in host) or "/" in host:
        raise ValueError(f"server address {text!r} has an invalid host {host!r}")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"server address {text!r} has an invalid port {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"server address {text!r} has port {port} outside 1-65535")
    return host, port


def _display_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------------------------
# Statistics over a sliding window


class RateWindow:
    """Events per second over the last ``window_s`` seconds, in O(1) memory.

    Counts go into fixed-width time buckets, so a stream of tens of thousands of summaries
    per second costs one integer increment each. Until a full window has passed since
    ``start_ns`` the rate divides by the time elapsed (at least one second, so the first few
    events do not read as a huge rate).
    """

    __slots__ = ("_bucket_ns", "_buckets", "_start_ns", "_window_ns")

    def __init__(self, start_ns: int, window_s: float = STATS_WINDOW_S, bucket_s: float = 0.1):
        self._window_ns = int(window_s * _NS_PER_S)
        self._bucket_ns = max(1, int(bucket_s * _NS_PER_S))
        self._start_ns = start_ns
        self._buckets: deque[list[int]] = deque()  # [bucket index, count], oldest first

    def record(self, now_ns: int) -> None:
        index = now_ns // self._bucket_ns
        if self._buckets and self._buckets[-1][0] == index:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([index, 1])
            self._prune(now_ns)

    def rate(self, now_ns: int) -> float:
        self._prune(now_ns)
        total = sum(count for _, count in self._buckets)
        elapsed_ns = min(self._window_ns, max(now_ns - self._start_ns, _NS_PER_S))
        return total * _NS_PER_S / elapsed_ns

    def _prune(self, now_ns: int) -> None:
        oldest = (now_ns - self._window_ns) // self._bucket_ns
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()


@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """Latency figures in milliseconds; ``None`` where there is nothing to measure."""

    last_ms: float | None
    p50_ms: float | None
    p99_ms: float | None


class LatencyWindow:
    """Latency (receive time minus ``arrival_time``) of the most recent summaries.

    Keeps at most ``max_samples`` samples from the last ``window_s`` seconds so that the
    percentiles, computed only when the view is redrawn, stay cheap at any message rate.
    """

    __slots__ = ("_max_samples", "_samples", "_window_ns", "last_ns")

    def __init__(self, window_s: float = STATS_WINDOW_S, max_samples: int = 1024):
        self._window_ns = int(window_s * _NS_PER_S)
        self._max_samples = max_samples
        self._samples: deque[tuple[int, int]] = deque(maxlen=max_samples)  # (received, latency)
        self.last_ns: int | None = None

    def record(self, arrival_ns: int, now_ns: int) -> None:
        if arrival_ns <= 0:  # the server did not say when the data arrived
            return
        latency = now_ns - arrival_ns
        self.last_ns = latency
        self._samples.append((now_ns, latency))

    def snapshot(self, now_ns: int) -> LatencySnapshot:
        horizon = now_ns - self._window_ns
        while self._samples and self._samples[0][0] < horizon:
            self._samples.popleft()
        last = None if self.last_ns is None else self.last_ns / _NS_PER_MS
        if not self._samples:
            return LatencySnapshot(last, None, None)
        ordered = sorted(latency for _, latency in self._samples)
        return LatencySnapshot(
            last, _percentile(ordered, 0.50) / _NS_PER_MS, _percentile(ordered, 0.99) / _NS_PER_MS
        )


def _percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(slots=True)
class WatchState:
    """What the live view shows: the latest summary plus stream statistics."""

    symbol: str | None
    server: str
    started_ns: int
    summary: orderbook_pb2.Summary | None = None
    count: int = 0
    last_received_ns: int | None = None
    last_arrival: int | None = None
    # Every venue this stream has shown live, so one that drops out is shown as down.
    seen_venues: set[str] = field(default_factory=set)
    rate: RateWindow = field(init=False)
    latency: LatencyWindow = field(init=False)

    def __post_init__(self) -> None:
        self.rate = RateWindow(self.started_ns)
        self.latency = LatencyWindow()

    def record(self, summary: orderbook_pb2.Summary, now_ns: int) -> bool:
        """Take in a received summary; False (and nothing changes) if it is a resend."""
        if is_resend(summary, self.last_arrival):
            return False
        self.last_arrival = summary.arrival_time
        self.summary = summary
        self.count += 1
        self.last_received_ns = now_ns
        self.rate.record(now_ns)
        self.latency.record(summary.arrival_time, now_ns)
        self.seen_venues.update(_venues(summary))
        return True


def is_resend(summary: orderbook_pb2.Summary, previous_arrival: int | None) -> bool:
    """True if ``summary`` repeats the previous one (``arrival_time`` ``previous_arrival``).

    A server resends the latest summary when its symbol has been quiet for a while, with
    the same ``arrival_time``. It proves the stream is alive but is not an update: counted,
    it would inflate the rate and add latencies as old as the quiet spell. Different
    changes always have different arrival times; 0 means the server gave none.
    """
    return summary.arrival_time != 0 and summary.arrival_time == previous_arrival


# --------------------------------------------------------------------------------------------
# JSON lines


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _levels_json(levels: Iterable[orderbook_pb2.Level]) -> list[dict[str, Any]]:
    return [
        {"exchange": lv.exchange, "price": _finite(lv.price), "amount": _finite(lv.amount)}
        for lv in levels
    ]


def summary_to_json(symbol: str | None, summary: orderbook_pb2.Summary, now_ns: int) -> bytes:
    """One compact JSON object (no trailing newline) describing ``summary``.

    NaN/infinite numbers become ``null`` so every line is valid JSON. ``symbol`` is ``None``
    (``null``) for the server's default stream, whose symbol the protocol does not name.
    ``latency_ms`` is ``null`` when the summary carries no ``arrival_time``.
    """
    arrival = summary.arrival_time
    latency_ms = round((now_ns - arrival) / _NS_PER_MS, 3) if arrival else None
    return orjson.dumps(
        {
            "symbol": symbol,
            "spread": _finite(summary.spread),
            "bids": _levels_json(summary.bids),
            "asks": _levels_json(summary.asks),
            "arrival_time": arrival,
            "latency_ms": latency_ms,
            "live_exchanges": list(summary.live_exchanges),
        }
    )


# --------------------------------------------------------------------------------------------
# Live view


def _decimals_needed(value: float) -> int:
    if not math.isfinite(value):
        return 0
    fraction = f"{abs(value):.{MAX_DECIMALS}f}".partition(".")[2].rstrip("0")
    return len(fraction)


def _column_decimals(values: Iterable[float]) -> int:
    return max((_decimals_needed(v) for v in values), default=0)


def _fmt(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else EMPTY


def exchange_text(name: str) -> Text:
    """The venue name in its colour (unknown venues share a fallback colour)."""
    return Text(name, style=EXCHANGE_COLOURS.get(name, FALLBACK_COLOUR))


# Like box.SIMPLE_HEAD, but section ends (around the spread line) draw a rule too.
_LADDER_BOX = box.Box("    \n    \n ── \n    \n ── \n    \n    \n    \n")
_ASK = Text("ask", style="dim")
_BID = Text("bid", style="dim")


def _add_side(
    table: Table,
    label: Text,
    levels: Sequence[orderbook_pb2.Level],
    *,
    price_style: str,
    empty: str,
    price_dp: int,
    amount_dp: int,
) -> None:
    if not levels:
        table.add_row(label, Text(empty, style="dim"), EMPTY, EMPTY)
    for lv in levels:
        table.add_row(
            label,
            exchange_text(lv.exchange),
            Text(_fmt(lv.price, price_dp), style=price_style),
            _fmt(lv.amount, amount_dp),
        )


def render_book(summary: orderbook_pb2.Summary | None, depth: int = BOOK_DEPTH) -> RenderableType:
    """The ladder: asks highest price first, the spread line, then bids best first.

    Prices and amounts are right-aligned with one number of decimals per column, so the
    decimal points line up; the best ask sits right above the spread line. Only the best
    ``depth`` levels of each side are shown.
    """
    if summary is None:
        return Text("waiting for data…", style="dim italic")
    asks = list(summary.asks[:depth])
    bids = list(summary.bids[:depth])
    price_dp = _column_decimals(lv.price for lv in [*asks, *bids])
    amount_dp = _column_decimals(lv.amount for lv in [*asks, *bids])

    table = Table(box=_LADDER_BOX, show_edge=False, pad_edge=False)
    table.add_column("side")
    table.add_column("exchange")
    table.add_column("price", justify="right")
    table.add_column("amount", justify="right")

    # Levels arrive best first: asks are mirrored so the best ask is nearest the spread.
    _add_side(
        table,
        _ASK,
        asks[::-1],
        price_style="red",
        empty="no asks",
        price_dp=price_dp,
        amount_dp=amount_dp,
    )
    table.rows[-1].end_section = True

    table.add_row(
        Text("spread", style="bold"),
        "",
        Text(_fmt(summary.spread, price_dp), style="bold"),
        _spread_bps(asks, bids, summary.spread),
        end_section=True,
    )
    _add_side(
        table,
        _BID,
        bids,
        price_style="green",
        empty="no bids",
        price_dp=price_dp,
        amount_dp=amount_dp,
    )
    return table


def _spread_bps(
    asks: Sequence[orderbook_pb2.Level], bids: Sequence[orderbook_pb2.Level], spread: float
) -> Text:
    if not asks or not bids or not math.isfinite(spread):
        return Text("")
    mid = (asks[0].price + bids[0].price) / 2
    if not math.isfinite(mid) or mid <= 0:
        return Text("")
    return Text(f"{spread / mid * 1e4:.2f} bps", style="dim")


def _ms(value: float | None) -> str:
    return EMPTY if value is None else f"{value:.2f} ms"


def render_header(state: WatchState, now_ns: int, depth: int = BOOK_DEPTH) -> RenderableType:
    """Symbol, server, rate, latency, count and the venues in the current book."""
    title = Text.assemble(
        ("aggtrio watch ", "bold"),
        ("default symbol" if state.symbol is None else state.symbol, "bold cyan"),
        (" @ ", "dim"),
        (state.server, ""),
    )
    latency = state.latency.snapshot(now_ns)
    stats = Text.assemble(
        ("rate ", "dim"),
        (f"{state.rate.rate(now_ns):.1f}/s", "bold"),
        ("  latency ", "dim"),
        (_ms(latency.last_ms), "bold"),
        (f" (p50 {_ms(latency.p50_ms)} · p99 {_ms(latency.p99_ms)})", "dim"),
        ("  summaries ", "dim"),
        (str(state.count), "bold"),
    )
    if state.last_received_ns is not None:
        age_s = (now_ns - state.last_received_ns) / _NS_PER_S
        if age_s >= STALE_AFTER_S:
            stats.append(f"  last update {age_s:.0f} s ago", style="yellow")
    venues = Text()
    venues.append("live venues: ", style="dim")
    live = _venues(state.summary)
    down = sorted(state.seen_venues.difference(live))
    for i, name in enumerate(live):
        if i:
            venues.append(" ")
        venues.append_text(exchange_text(name))
    if not live:
        venues.append(EMPTY)
    if down:
        venues.append("  down: ", style="dim")
        venues.append(" ".join(down), style="bold red")
    if state.summary is not None:
        levels = max(len(state.summary.asks), len(state.summary.bids))
        if depth < levels:
            venues.append(f"  showing {depth} of {levels} levels per side", style="yellow")
    return Group(title, stats, venues)


def _venues(summary: orderbook_pb2.Summary | None) -> list[str]:
    """The venues live for this symbol; from the levels when the server predates that field."""
    if summary is None:
        return []
    if summary.live_exchanges:
        return sorted(summary.live_exchanges)
    return sorted({lv.exchange for lv in summary.asks} | {lv.exchange for lv in summary.bids})


def render_view(state: WatchState, now_ns: int, depth: int = BOOK_DEPTH) -> RenderableType:
    """The whole live screen: header above the book (``VIEW_CHROME_LINES + 2 * depth`` lines)."""
    return Group(render_header(state, now_ns, depth), Text(""), render_book(state.summary, depth))


def fit_depth(console: Console) -> int:
    """Levels per side that fit the terminal, so a short one loses deep levels, not bids."""
    if not console.is_terminal:
        return BOOK_DEPTH
    return max(1, min(BOOK_DEPTH, (console.height - VIEW_CHROME_LINES - 1) // 2))


# --------------------------------------------------------------------------------------------
# Connection: purerpc's channel with a connect timeout and end-of-connection detection


class _Unreachable(Exception):
    """The TCP connection to the server could not be made."""


class _ClientSocket(GRPCProtoSocket):  # type: ignore[misc]
    """purerpc 0.8's client socket, plus: wake up readers when the connection ends.

    Upstream the reader task simply returns on EOF, and a stream waiting for its next
    message then waits forever. Closing each stream's event channel turns that into
    ``anyio.EndOfStream`` for whoever waits on the stream. purerpc is pinned in pyproject
    because this relies on its internals.
    """

    _eof = False

    async def _reader_thread(self) -> None:
        try:
            await super()._reader_thread()
        finally:
            self._eof = True
            for stream in list(self._streams.values()):
                stream._incoming_events[0].close()

    def _allocate_stream(self, stream_id: int) -> Any:
        stream = super()._allocate_stream(stream_id)
        if self._eof:
            stream._incoming_events[0].close()
        return stream


class _Channel(purerpc.client._Channel):  # type: ignore[misc]
    """``purerpc.insecure_channel`` with a connect timeout, optional TLS, and closing its
    socket on exit.

    Connecting happens before any task group is opened, so the timeout's cancel scope
    never wraps a nursery that outlives it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ):
        super().__init__(host, port)
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context

    async def _connect(self) -> anyio.abc.ByteStream:
        if self._ssl_context is None:
            return await anyio.connect_tcp(self._host, self._port)
        # HTTP/2 marks its own end of stream, so no TLS close_notify is needed either way.
        return await anyio.connect_tcp(
            self._host, self._port, ssl_context=self._ssl_context, tls_standard_compatible=False
        )

    async def __aenter__(self) -> Self:
        try:
            with trio.fail_after(self._connect_timeout):
                sock = await self._connect()
        except trio.TooSlowError:
            raise _Unreachable(f"no connection within {self._connect_timeout:g} s") from None
        except ssl.SSLError as exc:
            raise _Unreachable(f"TLS handshake failed: {_tls_reason(exc)}") from None
        except OSError as exc:
            raise _Unreachable(_describe_os_error(exc)) from None
        try:
            self.push_async_callback(sock.aclose)
            config = GRPCConfiguration(client_side=True)
            self._grpc_socket = await self.enter_async_context(_ClientSocket(config, sock))
        except BaseException:
            await self.aclose()
            raise
        return self


def _tls_reason(exc: ssl.SSLError) -> str:
    if exc.reason == "WRONG_VERSION_NUMBER":
        # What a plaintext server's reply to a ClientHello looks like.
        return "the server does not speak TLS on this port (drop --tls)"
    return getattr(exc, "verify_message", None) or exc.reason or str(exc)


def _describe_os_error(exc: BaseException) -> str:
    """A short reason: ``Connection refused`` rather than a repr or an exception group."""
    # anyio wraps failures of every address it tried in "All connection attempts failed".
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        reasons = dict.fromkeys(_describe_os_error(e) for e in cause.exceptions)
        return "; ".join(reasons)
    if isinstance(cause, OSError):
        return _describe_os_error(cause)
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # trio's strerror repeats the address we already show
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True, slots=True)
class _Outcome:
    code: int
    message: str | None = None
    output_closed: bool = False


_OUTPUT_CLOSED = _Outcome(0, output_closed=True)
_CLOSED = "server closed the connection"


@dataclass(slots=True)
class _Tally:
    received: int = 0


async def _summaries(
    stub: Any, symbol: str | None, tally: _Tally
) -> AsyncGenerator[orderbook_pb2.Summary, None]:
    if symbol is None:
        call = stub.BookSummary(orderbook_pb2.Empty())
    else:
        call = stub.BookSummaryForSymbol(orderbook_pb2.SummaryRequest(symbol=symbol))
    async with aclosing(call) as stream:
        async for summary in stream:
            tally.received += 1
            yield summary


def _stream_ended(received: int) -> _Outcome:
    return _Outcome(1, f"server ended the stream after {received} summaries")


async def _run_json(
    summaries: AsyncIterator[orderbook_pb2.Summary],
    symbol: str | None,
    count: int | None,
    out: TextIO,
) -> _Outcome:
    received = 0
    previous_arrival: int | None = None
    async for summary in summaries:
        if is_resend(summary, previous_arrival):
            continue
        previous_arrival = summary.arrival_time
        line = summary_to_json(symbol, summary, time.time_ns())
        try:
            out.write(line.decode() + "\n")
            out.flush()  # one line at a time, so `| jq` and friends see each summary at once
        except BrokenPipeError:
            return _OUTPUT_CLOSED
        received += 1
        if count is not None and received >= count:
            return _Outcome(0)
    return _stream_ended(received)


def _silence_stdout(out: TextIO) -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's exit flush stays quiet."""
    if out is not sys.stdout:
        return
    with suppress(OSError, ValueError):  # not a real file (tests, wrappers): nothing to do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich would dup2 /dev/null over the process's stdout and SystemExit(1), even when
        # this console writes elsewhere. A closed output is a quiet exit 0 here, as for --json.
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "output closed")


async def _run_live(
    summaries: AsyncIterator[orderbook_pb2.Summary],
    state: WatchState,
    count: int | None,
    console: Console,
) -> _Outcome:
    changed = trio.Event()

    async def redraw(live: Live) -> None:
        nonlocal changed
        while True:
            with trio.move_on_after(IDLE_REDRAW_S):
                await changed.wait()
            changed = trio.Event()
            live.update(render_view(state, time.time_ns(), fit_depth(console)), refresh=True)
            await trio.sleep(REDRAW_INTERVAL_S)

    outcome = _stream_ended(0)
    # auto_refresh off: rich would redraw from its own thread while this task mutates state.
    live = Live(
        render_view(state, time.time_ns(), fit_depth(console)),
        console=console,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    )
    try:
        with live:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(redraw, live)
                try:
                    async for summary in summaries:
                        if not state.record(summary, time.time_ns()):
                            continue
                        changed.set()
                        if count is not None and state.count >= count:
                            outcome = _Outcome(0)
                            break
                    else:
                        outcome = _stream_ended(state.count)
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    outcome = _Outcome(1, _CLOSED)
                finally:
                    nursery.cancel_scope.cancel()
                    # The frame rich draws on exit stays on screen: make it the whole book,
                    # or nothing if it would only say "waiting for data".
                    live.transient = state.count == 0
                    live.update(render_view(state, time.time_ns()))
    finally:
        if not console.is_terminal and not live.transient:
            with suppress(BrokenPipeError):
                console.line()  # rich ends the frame with a newline only on terminals
    return outcome


async def _watch(
    *,
    host: str,
    port: int,
    address: str,
    request_symbol: str | None,
    display_symbol: str | None,
    json_lines: bool,
    count: int | None,
    out: TextIO | None,
    connect_timeout: float,
    ssl_context: ssl.SSLContext | None,
) -> _Outcome:
    tally = _Tally()
    async with _Channel(host, port, connect_timeout, ssl_context) as channel:
        stub = orderbook_grpc.OrderbookAggregatorStub(channel)  # type: ignore[no-untyped-call]
        async with aclosing(_summaries(stub, request_symbol, tally)) as summaries:
            if json_lines:
                try:
                    outcome = await _run_json(
                        summaries, display_symbol, count, out if out is not None else sys.stdout
                    )
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    outcome = _Outcome(1, _CLOSED)
            else:
                console = _Console(file=out) if out is not None else _Console()
                state = WatchState(symbol=display_symbol, server=address, started_ns=time.time_ns())
                outcome = await _run_live(summaries, state, count, console)
    if outcome.message == _CLOSED and ssl_context is None and tally.received == 0:
        # A TLS server hangs up on a plaintext client without a word.
        return _Outcome(1, f"{_CLOSED} before sending anything (if it serves TLS, add --tls)")
    return outcome


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _classify(exc: BaseException, address: str) -> _Outcome | None:
    """Map an expected failure (possibly inside exception groups) to a user-facing line.

    Returns ``None`` for anything unexpected (a bug, KeyboardInterrupt, cancellation), which
    the caller re-raises.
    """
    leaves = _leaves(exc)
    if any(not isinstance(leaf, Exception) for leaf in leaves if not _is_cancelled(leaf)):
        return None  # KeyboardInterrupt, SystemExit, ...
    for leaf in leaves:
        if isinstance(leaf, _Unreachable):
            return _Outcome(1, f"cannot reach server at {address}: {leaf}")
        if isinstance(leaf, purerpc.RpcFailedError):
            status = leaf.status
            name = status.status_code.name
            message = _one_line(str(status.status_message or ""))
            return _Outcome(1, f"{name}: {message}" if message else name)
    for leaf in leaves:
        if isinstance(leaf, BrokenPipeError):
            # Only our output raises this: anyio reports socket errors as BrokenResourceError.
            return _OUTPUT_CLOSED
        if isinstance(
            leaf, anyio.EndOfStream | anyio.BrokenResourceError | anyio.ClosedResourceError
        ):
            return _Outcome(1, f"connection to {address} lost")
        if isinstance(leaf, OSError):
            return _Outcome(1, f"connection to {address} lost: {_describe_os_error(leaf)}")
        if isinstance(leaf, purerpc.GRPCError) or type(leaf).__module__.startswith("h2."):
            detail = _one_line(str(leaf)) or type(leaf).__name__
            return _Outcome(
                1, f"protocol error from {address} (is it an aggtrio server?): {detail}"
            )
    return None


def _is_cancelled(exc: BaseException) -> bool:
    return isinstance(exc, trio.Cancelled)


async def run_watch(
    server: str,
    symbol: str | None,
    *,
    json_lines: bool = False,
    count: int | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Stream summaries from ``server`` ("HOST:PORT") and show them; return an exit code.

    ``symbol`` ``None`` subscribes to the server's default symbol (``BookSummary``), any
    other value is sent as given to ``BookSummaryForSymbol`` (the server normalizes and
    validates it). ``json_lines`` writes one JSON object per summary to ``out`` instead of
    the live view; ``count`` stops with 0 after that many summaries. Errors go to ``err``
    (default ``sys.stderr``) as one line. With ``ssl_context`` the connection is TLS (the
    server's certificate is checked against ``server``'s host name). See the module
    docstring for exit codes.

    Raises :class:`ValueError` for a malformed ``server`` or ``count < 1``, before connecting.
    """
    host, port = parse_server_address(server)
    if count is not None and count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    address = _display_address(host, port)
    display_symbol = symbol
    if symbol is not None:
        # An invalid symbol is still sent: the server answers INVALID_ARGUMENT in its words.
        with suppress(InvalidSymbolError):
            display_symbol = normalize_symbol(symbol)

    try:
        outcome = await _watch(
            host=host,
            port=port,
            address=address,
            request_symbol=symbol,
            display_symbol=display_symbol,
            json_lines=json_lines,
            count=count,
            out=out,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
        )
    except BaseException as exc:
        classified = _classify(exc, address)
        if classified is not None:
            outcome = classified
        elif isinstance(exc, BaseExceptionGroup) and any(
            isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc)
        ):
            # purerpc's and our task groups wrap Ctrl-C in a group; callers expect it bare.
            raise KeyboardInterrupt from exc
        else:
            raise
    if outcome.output_closed:
        _silence_stdout(out if out is not None else sys.stdout)
    if outcome.message is not None:
        stream = err if err is not None else sys.stderr
        with suppress(BrokenPipeError, ValueError):
            print(f"{PROG}: {outcome.message}", file=stream, flush=True)
    return outcome.code
