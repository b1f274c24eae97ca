"""``run_watch`` against a real purerpc server in the same process."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import purerpc
import pytest
import trio
from rich.console import RenderableType

from aggtrio import watch
from aggtrio._proto import orderbook_grpc
from aggtrio._proto.orderbook_pb2 import Empty, Level, Summary, SummaryRequest
from aggtrio.watch import run_watch

TIMEOUT_S = 10  # generous ceiling; every test finishes in well under a second


def canned(i: int) -> Summary:
    bid = round(0.0345 - i * 0.00001, 8)
    return Summary(
        spread=round(0.0346 - bid, 8),
        bids=[
            Level(exchange="binance", price=bid, amount=1.5),
            Level(exchange="bitstamp", price=0.0344, amount=2.25),
        ],
        asks=[
            Level(exchange="bitstamp", price=0.0346, amount=0.5),
            Level(exchange="binance", price=0.0347, amount=3.0),
        ],
        arrival_time=time.time_ns(),
    )


class Canned(orderbook_grpc.OrderbookAggregatorServicer):
    """Streams ``n`` canned summaries, then either ends the stream or stays quiet."""

    def __init__(self, n: int = 5, *, end: bool = False, error: Exception | None = None):
        self.n = n
        self.end = end
        self.error = error
        self.requests: list[str | None] = []
        self.sent = trio.Event()

    async def _stream(self) -> AsyncIterator[Summary]:
        if self.error is not None:
            raise self.error
        for i in range(self.n):
            yield canned(i)
        self.sent.set()
        if not self.end:
            await trio.sleep_forever()

    async def BookSummary(self, message: Empty) -> AsyncIterator[Summary]:  # type: ignore[override]
        self.requests.append(None)
        async for summary in self._stream():
            yield summary

    async def BookSummaryForSymbol(  # type: ignore[override]
        self, message: SummaryRequest
    ) -> AsyncIterator[Summary]:
        self.requests.append(message.symbol)
        async for summary in self._stream():
            yield summary


async def serve(nursery: trio.Nursery, servicer: Canned) -> int:
    server = purerpc.Server(port=0)
    server.add_service(servicer.service)
    port: int = await nursery.start(server.serve_async)
    return port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_json_lines_stop_after_count(nursery: trio.Nursery) -> None:
    servicer = Canned(5)
    port = await serve(nursery, servicer)
    out, err = io.StringIO(), io.StringIO()
    with trio.fail_after(TIMEOUT_S):
        rc = await run_watch(
            f"127.0.0.1:{port}", "eth/btc", json_lines=True, count=3, out=out, err=err
        )
    assert rc == 0
    assert err.getvalue() == ""
    assert servicer.requests == ["eth/btc"]  # sent as typed; the server normalizes
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        doc = json.loads(line)
        expected = canned(i)
        assert doc["symbol"] == "ETHBTC"
        assert doc["spread"] == pytest.approx(expected.spread)
        assert doc["bids"] == [
            {"exchange": lv.exchange, "price": lv.price, "amount": lv.amount}
            for lv in expected.bids
        ]
        assert doc["asks"] == [
            {"exchange": lv.exchange, "price": lv.price, "amount": lv.amount}
            for lv in expected.asks
        ]
        assert isinstance(doc["arrival_time"], int)
        assert doc["arrival_time"] > 0
        assert 0 <= doc["latency_ms"] < TIMEOUT_S * 1000


async def test_default_symbol_uses_book_summary(nursery: trio.Nursery) -> None:
    servicer = Canned(2)
    port = await serve(nursery, servicer)
    out = io.StringIO()
    with trio.fail_after(TIMEOUT_S):
        rc = await run_watch(f"localhost:{port}", None, json_lines=True, count=2, out=out)
    assert rc == 0
    assert servicer.requests == [None]
    assert [json.loads(line)["symbol"] for line in out.getvalue().splitlines()] == [None, None]


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            purerpc.NotFoundError("unknown symbol 'X'; served: ETHBTC"),
            "aggtrio watch: NOT_FOUND: unknown symbol 'X'; served: ETHBTC\n",
        ),
        (
            purerpc.InvalidArgumentError("symbol 'a b' is not a pair name\nlike ETHBTC"),
            "aggtrio watch: INVALID_ARGUMENT: symbol 'a b' is not a pair name like ETHBTC\n",
        ),
        (purerpc.UnavailableError(), "aggtrio watch: UNAVAILABLE\n"),
    ],
)
@pytest.mark.parametrize("json_lines", [True, False])
async def test_grpc_status_is_one_line_on_stderr(
    nursery: trio.Nursery, error: Exception, line: str, json_lines: bool
) -> None:
    port = await serve(nursery, Canned(error=error))
    out, err = io.StringIO(), io.StringIO()
    with trio.fail_after(TIMEOUT_S):
        rc = await run_watch(f"127.0.0.1:{port}", "X", json_lines=json_lines, out=out, err=err)
    assert rc == 1
    assert err.getvalue() == line
    assert out.getvalue() == ""  # not even an empty live view


async def test_status_goes_to_sys_stderr_by_default(
    nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    port = await serve(nursery, Canned(error=purerpc.NotFoundError("unknown symbol 'X'")))
    with trio.fail_after(TIMEOUT_S):
        rc = await run_watch(f"127.0.0.1:{port}", "X", json_lines=True)
    assert rc == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "aggtrio watch: NOT_FOUND: unknown symbol 'X'\n"


async def test_unreachable_server_fails_fast() -> None:
    port = free_port()
    err = io.StringIO()
    start = trio.current_time()
    with trio.fail_after(TIMEOUT_S):
        rc = await run_watch(f"127.0.0.1:{port}", None, json_lines=True, err=err)
    assert rc == 1
    assert trio.current_time() - start < 2
    message = err.getvalue()
    assert message.startswith(f"aggtrio watch: cannot reach server at 127.0.0.1:{port}: ")
    assert "refused" in message.lower()
    assert message.count("\n") == 1


async def test_connect_timeout(monkeypatch: pytest.MonkeyPatch, autojump_clock: Any) -> None:
    async def black_hole(*args: object, **kwargs: object) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(anyio, "connect_tcp", black_hole)
    err = io.StringIO()
    rc = await run_watch("192.0.2.1:50051", None, err=err, connect_timeout=3)
    assert rc == 1
    assert err.getvalue() == (
        "aggtrio watch: cannot reach server at 192.0.2.1:50051: no connection within 3 s\n"
    )


def test_malformed_server_raises_before_connecting() -> None:
    with pytest.raises(ValueError, match="port"):
        trio.run(run_watch, "localhost", None)
    with pytest.raises(ValueError, match="count"):
        trio.run(lambda: run_watch("localhost:1", None, count=0))


async def test_stream_ended_by_server(nursery: trio.Nursery) -> None:
    port = await serve(nursery, Canned(2, end=True))
    out, err = io.StringIO(), io.StringIO()
    with trio.fail_after(TIMEOUT_S):
        rc = await run_watch(f"127.0.0.1:{port}", None, json_lines=True, out=out, err=err)
    assert rc == 1
    assert len(out.getvalue().splitlines()) == 2
    assert err.getvalue() == "aggtrio watch: server ended the stream after 2 summaries\n"

    # The same end is a success when --count was already satisfied.
    with trio.fail_after(TIMEOUT_S):
        rc = await run_watch(f"127.0.0.1:{port}", None, json_lines=True, count=2, out=out)
    assert rc == 0


async def _proxy(
    backend_port: int, *, task_status: trio.TaskStatus[tuple[int, trio.CancelScope]]
) -> None:
    """A TCP relay whose cancellation drops every connection, as a crashing server would."""

    async def relay(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", backend_port) as backend:

            async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                async for chunk in src:
                    await dst.send_all(chunk)

            async with trio.open_nursery() as inner:
                inner.start_soon(pump, client, backend)
                inner.start_soon(pump, backend, client)

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, relay, 0)
            task_status.started((listeners[0].socket.getsockname()[1], scope))


class LineCounter(io.StringIO):
    def __init__(self, wanted: int) -> None:
        super().__init__()
        self.wanted = wanted
        self.reached = trio.Event()

    def write(self, text: str) -> int:
        n = super().write(text)
        if self.getvalue().count("\n") >= self.wanted:
            self.reached.set()
        return n


async def test_connection_dropped_mid_stream(nursery: trio.Nursery) -> None:
    backend = await serve(nursery, Canned(2))
    port, proxy = await nursery.start(_proxy, backend)
    out, err = LineCounter(2), io.StringIO()
    codes: list[int] = []

    async def client() -> None:
        codes.append(
            await run_watch(f"127.0.0.1:{port}", "ETHBTC", json_lines=True, out=out, err=err)
        )

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as inner:
            inner.start_soon(client)
            await out.reached.wait()
            proxy.cancel()
    assert codes == [1]
    assert err.getvalue() == "aggtrio watch: server closed the connection\n"


@pytest.mark.parametrize("json_lines", [True, False])
async def test_closed_output_ends_quietly(nursery: trio.Nursery, json_lines: bool) -> None:
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    port = await serve(nursery, Canned(5))
    err = io.StringIO()
    with trio.fail_after(TIMEOUT_S):
        # The live view writes to a non-terminal only when it stops, hence the count.
        rc = await run_watch(
            f"127.0.0.1:{port}", None, json_lines=json_lines, count=2, out=ClosedPipe(), err=err
        )
    assert rc == 0
    assert err.getvalue() == ""


async def test_ctrl_c_surfaces_as_a_bare_keyboard_interrupt(nursery: trio.Nursery) -> None:
    # purerpc's task groups would otherwise hand the CLI a BaseExceptionGroup.
    class CtrlC(io.StringIO):
        def write(self, text: str) -> int:
            raise KeyboardInterrupt

    port = await serve(nursery, Canned(5))
    with trio.fail_after(TIMEOUT_S), pytest.raises(KeyboardInterrupt):
        await run_watch(f"127.0.0.1:{port}", None, json_lines=True, out=CtrlC())


async def test_ctrl_c_in_live_view(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    renders = 0
    real_render_view = watch.render_view

    def render_then_ctrl_c(state: watch.WatchState, now_ns: int, depth: int = 10) -> RenderableType:
        nonlocal renders
        renders += 1
        if renders == 2:  # the first redraw, inside the live view's nursery
            raise KeyboardInterrupt
        return real_render_view(state, now_ns, depth)

    monkeypatch.setattr(watch, "render_view", render_then_ctrl_c)
    port = await serve(nursery, Canned(5))
    with trio.fail_after(TIMEOUT_S), pytest.raises(KeyboardInterrupt):
        await run_watch(f"127.0.0.1:{port}", None, out=io.StringIO())


async def test_live_view_shows_the_book(nursery: trio.Nursery) -> None:
    port = await serve(nursery, Canned(5))
    out, err = io.StringIO(), io.StringIO()
    with trio.fail_after(TIMEOUT_S):
        rc = await run_watch(f"127.0.0.1:{port}", "ETH-BTC", count=2, out=out, err=err)
    assert rc == 0
    assert err.getvalue() == ""
    text = out.getvalue()
    assert "ETHBTC" in text
    assert f"127.0.0.1:{port}" in text
    assert "summaries 2" in text
    assert "venues: binance bitstamp" in text
    # The second summary is the one on screen: asks highest first, then spread, then bids.
    order = [text.index(p) for p in ("0.03470", "0.03460", "spread", "0.03449", "0.03440")]
    assert order == sorted(order)
    assert "0.03450" not in text  # the first summary's best bid was replaced
    assert text.endswith("\n")
