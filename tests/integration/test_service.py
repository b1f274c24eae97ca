"""`aggtrio serve` against the simulated venues, seen through real gRPC clients."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from types import ModuleType

import grpc
import pytest
import trio

from aggtrio._proto.orderbook_pb2 import Summary
from aggtrio.simulator import SimulatedVenue

from .harness import ROOT, ServerProcess, first_summary, levels, naive_merge, purerpc_stream

PINNED = {
    "binance": (
        [("0.03500", "1.5"), ("0.03490", "2.0"), ("0.03480", "1.0")],
        [("0.03520", "0.5"), ("0.03530", "3.0")],
    ),
    "bitstamp": (
        [("0.03500", "2.5"), ("0.03495", "1.0")],
        [("0.03510", "0.25"), ("0.03520", "0.5"), ("0.03540", "9.0")],
    ),
}
PINNED_BIDS = [
    ("bitstamp", 0.035, 2.5),  # equal price: larger amount first
    ("binance", 0.035, 1.5),
    ("bitstamp", 0.03495, 1.0),
    ("binance", 0.0349, 2.0),
    ("binance", 0.0348, 1.0),
]
PINNED_ASKS = [
    ("bitstamp", 0.0351, 0.25),
    ("binance", 0.0352, 0.5),  # equal price and amount: exchange name decides
    ("bitstamp", 0.0352, 0.5),
    ("binance", 0.0353, 3.0),
    ("bitstamp", 0.0354, 9.0),
]


def pin(simulators: dict[str, SimulatedVenue], symbol: str = "ETHBTC") -> None:
    for name, (bids, asks) in PINNED.items():
        simulators[name].set_book(symbol, bids, asks)


def is_pinned(summary: Summary) -> bool:
    return levels(summary.bids) == PINNED_BIDS and levels(summary.asks) == PINNED_ASKS


async def test_grpcio_client_receives_the_merged_book(
    server: ServerProcess,
    simulators: dict[str, SimulatedVenue],
    grpcio_modules: tuple[ModuleType, ModuleType],
) -> None:
    pb2, pb2_grpc = grpcio_modules
    started_ns = time.time_ns()
    pin(simulators)

    def read_until_pinned() -> Summary:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb2_grpc.OrderbookAggregatorStub(channel)
            # Any accepted spelling of the pair names the same book.
            call = stub.BookSummaryForSymbol(pb2.SummaryRequest(symbol="eth/btc"), timeout=15)
            for summary in call:
                if is_pinned(summary):
                    call.cancel()
                    return summary
        raise AssertionError("stream ended before the pinned book arrived")

    summary = await trio.to_thread.run_sync(read_until_pinned)
    assert math.isclose(summary.spread, 0.0351 - 0.035)
    assert started_ns <= summary.arrival_time <= time.time_ns()


async def test_purerpc_client_book_summary_streams_the_default_symbol(
    server: ServerProcess, simulators: dict[str, SimulatedVenue]
) -> None:
    pin(simulators, "ETHBTC")
    summary = await first_summary(server.port, None, is_pinned)
    assert len(summary.bids) == 5


async def test_merged_book_matches_what_the_venues_last_sent(
    server: ServerProcess, simulators: dict[str, SimulatedVenue]
) -> None:
    # Let the market move, then hold it still and compare with the venues' own books.
    await first_summary(server.port, "BTCUSDT", lambda s: len(s.bids) == 10)
    for sim in simulators.values():
        sim.freeze()
    await trio.sleep(0.5)  # the venues re-send their frozen books
    books = {name: sim.book("BTCUSDT") for name, sim in simulators.items()}
    expected_bids, expected_asks = naive_merge(books)
    summary = await first_summary(
        server.port,
        "btc-usdt",
        lambda s: levels(s.bids) == expected_bids and levels(s.asks) == expected_asks,
    )
    assert {lvl.exchange for lvl in [*summary.bids, *summary.asks]} <= {"binance", "bitstamp"}
    assert len(summary.bids) == len(summary.asks) == 10
    assert summary.spread == expected_asks[0][1] - expected_bids[0][1]


@pytest.mark.parametrize(
    ("symbol", "code", "fragment"),
    [
        ("XRPUSDT", grpc.StatusCode.NOT_FOUND, "served: ETHBTC, BTCUSDT"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ("ETH BTC", grpc.StatusCode.INVALID_ARGUMENT, "not a pair name"),
        ("ETH*BTC", grpc.StatusCode.INVALID_ARGUMENT, "not a pair name"),
        ("ÉTHBTC", grpc.StatusCode.INVALID_ARGUMENT, "not a pair name"),
        ("ETH/" + "B" * 29, grpc.StatusCode.INVALID_ARGUMENT, "longer than 32 characters"),
        ("X" * 10_000, grpc.StatusCode.INVALID_ARGUMENT, "longer than 32 characters"),
    ],
    ids=["unknown", "empty", "space", "star", "non-ascii", "33 characters", "10000 characters"],
)
async def test_bad_symbols_get_the_right_status(
    server: ServerProcess,
    grpcio_modules: tuple[ModuleType, ModuleType],
    symbol: str,
    code: grpc.StatusCode,
    fragment: str,
) -> None:
    pb2, pb2_grpc = grpcio_modules

    def call() -> grpc.RpcError:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb2_grpc.OrderbookAggregatorStub(channel)
            try:
                next(stub.BookSummaryForSymbol(pb2.SummaryRequest(symbol=symbol), timeout=5))
            except grpc.RpcError as exc:
                return exc
        raise AssertionError("no error")

    error = await trio.to_thread.run_sync(call)
    assert error.code() == code
    assert fragment in error.details()
    assert len(error.details()) < 200  # a huge symbol is not echoed back


async def test_fifty_concurrent_clients_all_receive_updates(server: ServerProcess) -> None:
    received = [0] * 50

    async def client(index: int) -> None:
        async def count(summary: Summary) -> bool:
            received[index] += 1
            return received[index] >= 3

        await purerpc_stream(server.port, "ETHBTC" if index % 2 else "BTCUSDT", count)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for index in range(50):
                nursery.start_soon(client, index)
    assert received == [3] * 50


async def test_a_client_that_never_reads_does_not_delay_another(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    from .harness import start_server, venue_url_args

    server = await start_server(nursery, ["--symbols", "ETHBTC", *venue_url_args(simulators)])
    # A real client process that stops reading: SIGSTOP freezes it with its stream open.
    address = f"127.0.0.1:{server.port}"
    stalled = await trio.lowlevel.open_process(
        [sys.executable, "-m", "aggtrio", "watch", "ETHBTC", "--json", "--server", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        await trio.sleep(1.5)  # it connected and is reading
        stalled.send_signal(signal.SIGSTOP)
        gaps: list[float] = []
        last = trio.current_time()
        count = 0

        async def measure(summary: Summary) -> bool:
            nonlocal last, count
            now = trio.current_time()
            gaps.append(now - last)
            last, count = now, count + 1
            return count >= 60

        with trio.fail_after(30):
            await purerpc_stream(server.port, "ETHBTC", measure)
        # Bitstamp alone moves ~20 times a second: no gap near a second means no stall.
        assert max(gaps[1:]) < 1.0, gaps
    finally:
        stalled.send_signal(signal.SIGCONT)
        stalled.kill()
        with trio.CancelScope(shield=True):
            await stalled.wait()
    server.terminate()
    with trio.fail_after(5):
        await server.process.wait()
    assert server.process.returncode == 0
    assert server.problems() == []


async def test_a_killed_venue_leaves_the_book_within_two_seconds_and_returns(
    server: ServerProcess, simulators: dict[str, SimulatedVenue]
) -> None:
    def venues_in(summary: Summary) -> set[str]:
        return {lvl.exchange for lvl in [*summary.bids, *summary.asks]}

    await first_summary(server.port, "ETHBTC", lambda s: venues_in(s) == {"binance", "bitstamp"})
    killed_at = trio.current_time()
    await simulators["binance"].kill()
    await first_summary(server.port, "ETHBTC", lambda s: venues_in(s) == {"bitstamp"}, within=2.0)
    assert trio.current_time() - killed_at < 2.0

    await simulators["binance"].restart()
    await first_summary(
        server.port, "ETHBTC", lambda s: venues_in(s) == {"binance", "bitstamp"}, within=15.0
    )
    assert any("binance: down" in line for line in server.log)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_ends_client_streams_with_unavailable_and_exits_zero(
    server: ServerProcess, grpcio_modules: tuple[ModuleType, ModuleType], signum: signal.Signals
) -> None:
    pb2, pb2_grpc = grpcio_modules
    first = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def stream_until_end() -> grpc.RpcError | None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb2_grpc.OrderbookAggregatorStub(channel)
            try:
                for _ in stub.BookSummary(pb2.Empty(), timeout=30):
                    trio.from_thread.run_sync(first.set, trio_token=token)
            except grpc.RpcError as exc:
                return exc
        return None

    async with trio.open_nursery() as nursery:
        results: list[grpc.RpcError | None] = []

        async def run_client() -> None:
            results.append(await trio.to_thread.run_sync(stream_until_end))

        nursery.start_soon(run_client)
        with trio.fail_after(10):
            await first.wait()
        sent_at = trio.current_time()
        server.process.send_signal(signum)
        with trio.fail_after(5):
            await server.process.wait()
        assert trio.current_time() - sent_at < 2.0
    assert server.process.returncode == 0
    error = results[0]
    assert error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
