"""The service run in the test's own trio loop, where its internals can be observed."""

from __future__ import annotations

import functools
import time
from typing import Any

import grpc
import pytest
import trio

from aggtrio import server
from aggtrio._proto.orderbook_pb2 import Empty, Summary, SummaryRequest
from aggtrio.aggregator import PublishedSummary
from aggtrio.app import RunningService, run_service
from aggtrio.broadcast import Broadcast
from aggtrio.config import ServeConfig
from aggtrio.feed import FeedState
from aggtrio.simulator import SimulatedVenue


async def start(
    nursery: trio.Nursery, sims: dict[str, SimulatedVenue], **options: Any
) -> RunningService:
    options.setdefault("symbols", ("ETHBTC",))
    config = ServeConfig(
        port=0, venue_urls={name: sim.url for name, sim in sims.items()}, **options
    )
    service: RunningService = await nursery.start(functools.partial(run_service, config))
    return service


async def test_a_disconnected_client_is_unsubscribed_at_once(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    service = await start(nursery, simulators)
    broadcast = service.broadcasts["ETHBTC"]
    for sim in simulators.values():
        sim.freeze()  # a quiet book: the server has nothing to write to the client

    token = trio.lowlevel.current_trio_token()

    def read_one_then_disconnect() -> None:
        # grpcio, not purerpc's client: purerpc's channel never closes its TCP socket.
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            summaries = channel.unary_stream(
                "/orderbook.OrderbookAggregator/BookSummaryForSymbol",
                request_serializer=SummaryRequest.SerializeToString,
                response_deserializer=Summary.FromString,
            )(SummaryRequest(symbol="ETHBTC"), timeout=10)
            next(summaries)
            assert trio.from_thread.run_sync(lambda: broadcast.subscribers, trio_token=token) == 1

    await trio.to_thread.run_sync(read_one_then_disconnect)
    # The connection is gone; the handler must not linger until its next write.
    with trio.fail_after(2):
        await broadcast.wait_idle()


async def test_feeds_report_live_and_count_messages(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    service = await start(nursery, simulators)
    with trio.fail_after(10):
        while not all(feed.stats.state is FeedState.LIVE for feed in service.feeds):  # noqa: ASYNC110 - polling state we do not own
            await trio.sleep(0.05)
    assert all(feed.stats.messages > 0 for feed in service.feeds)
    assert all(feed.stats.malformed == 0 for feed in service.feeds)
    assert service.aggregator.live_venues("ETHBTC") == ("binance", "bitstamp")


async def idle_within(broadcast: Broadcast[PublishedSummary], seconds: float) -> None:
    with trio.fail_after(seconds):
        await broadcast.wait_idle()


def book_summary_for_symbol(channel: grpc.Channel) -> Any:
    return channel.unary_stream(
        "/orderbook.OrderbookAggregator/BookSummaryForSymbol",
        request_serializer=SummaryRequest.SerializeToString,
        response_deserializer=Summary.FromString,
    )


def book_summary(channel: grpc.Channel) -> Any:
    return channel.unary_stream(
        "/orderbook.OrderbookAggregator/BookSummary",
        request_serializer=Empty.SerializeToString,
        response_deserializer=Summary.FromString,
    )


async def test_streams_beyond_the_limit_are_refused_until_a_slot_frees(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    service = await start(nursery, simulators, symbols=("ETHBTC", "BTCUSDT"), max_subscribers=2)
    token = trio.lowlevel.current_trio_token()

    def scenario() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            # The limit counts streams of both RPCs and every symbol together.
            btcusdt = book_summary_for_symbol(channel)(SummaryRequest(symbol="BTCUSDT"), timeout=10)
            next(btcusdt)
            default = book_summary(channel)(Empty(), timeout=10)
            next(default)
            with pytest.raises(grpc.RpcError) as refused:
                next(book_summary_for_symbol(channel)(SummaryRequest(symbol="ETHBTC"), timeout=10))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 2 concurrent streams" in refused.value.details()
            assert "--max-subscribers" in refused.value.details()

            btcusdt.cancel()
            trio.from_thread.run(idle_within, service.broadcasts["BTCUSDT"], 2.0, trio_token=token)
            assert service.service.open_streams == 1
            # The freed slot is usable at once.
            next(book_summary_for_symbol(channel)(SummaryRequest(symbol="ETHBTC"), timeout=10))

    await trio.to_thread.run_sync(scenario)


def venues_in(summary: Summary) -> set[str]:
    return {level.exchange for level in [*summary.bids, *summary.asks]}


async def test_a_stream_cancelled_on_a_quiet_symbol_ends_within_the_resend_interval(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    interval = 0.5
    service = await start(
        nursery, simulators, symbols=("ETHBTC", "BTCUSDT"), resend_interval=interval
    )
    for sim in simulators.values():
        sim.freeze()  # after their first snapshots, the books never change
    token = trio.lowlevel.current_trio_token()

    def scenario() -> tuple[float, list[Summary]]:
        # One channel: both calls share one HTTP/2 connection, which stays open throughout.
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            kept = book_summary(channel)(Empty(), timeout=20)
            cancelled = book_summary_for_symbol(channel)(
                SummaryRequest(symbol="BTCUSDT"), timeout=20
            )
            # Once both venues are in, nothing will change: the only writes are resends.
            while venues_in(next(cancelled)) != {"binance", "bitstamp"}:
                pass
            cancelled.cancel()  # RST_STREAM, which purerpc itself ignores
            started = time.monotonic()
            trio.from_thread.run(idle_within, service.broadcasts["BTCUSDT"], 2.0, trio_token=token)
            elapsed = time.monotonic() - started
            still_open = trio.from_thread.run_sync(
                lambda: service.service.open_streams, trio_token=token
            )
            assert still_open == 1
            return elapsed, [next(kept) for _ in range(4)]

    elapsed, kept = await trio.to_thread.run_sync(scenario)
    assert elapsed < 2 * interval
    # The stream that stayed is alive and, its book quiet too, gets the same summary again.
    assert kept[-1].SerializeToString() == kept[-2].SerializeToString()


# A client that stops reading, with windows small enough to fill within a few summaries
# (grpcio's defaults and BDP probing would take many seconds at the simulators' rate).
SMALL_WINDOWS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 4096)]


async def test_a_stream_cancelled_with_a_full_window_ends_at_once(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    # No resend to help: the call is stuck waiting for window, so it would never write again.
    service = await start(
        nursery, simulators, symbols=("ETHBTC", "BTCUSDT"), resend_interval=3600.0
    )
    token = trio.lowlevel.current_trio_token()

    def scenario() -> float:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}", options=SMALL_WINDOWS) as channel:
            stalled = book_summary_for_symbol(channel)(SummaryRequest(symbol="BTCUSDT"), timeout=30)
            stalled.initial_metadata()  # the call is running; it is never read
            kept = book_summary_for_symbol(channel)(SummaryRequest(symbol="BTCUSDT"), timeout=30)
            # 40 changes of ~600 bytes: far more than the stalled call's 4 KiB window.
            for _ in range(40):
                next(kept)
            stalled.cancel()
            started = time.monotonic()
            trio.from_thread.run(wait_for_subscribers, service, "BTCUSDT", 1, trio_token=token)
            return time.monotonic() - started

    assert await trio.to_thread.run_sync(scenario) < 1.0


async def wait_for_subscribers(service: RunningService, symbol: str, count: int) -> None:
    with trio.fail_after(5):
        while service.broadcasts[symbol].subscribers != count:  # noqa: ASYNC110 - no event for it
            await trio.sleep(0.01)


async def test_cancelled_calls_leave_nothing_behind_on_a_long_lived_connection(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue], monkeypatch: pytest.MonkeyPatch
) -> None:
    sockets: list[server.GRPCProtoSocket] = []

    class RecordingSocket(server.GRPCProtoSocket):  # type: ignore[misc]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            sockets.append(self)

    monkeypatch.setattr(server, "GRPCProtoSocket", RecordingSocket)
    service = await start(nursery, simulators, symbols=("ETHBTC", "BTCUSDT"))
    token = trio.lowlevel.current_trio_token()

    def scenario() -> int:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            kept = book_summary(channel)(Empty(), timeout=30)
            next(kept)
            for _ in range(20):
                call = book_summary_for_symbol(channel)(SummaryRequest(symbol="BTCUSDT"))
                next(call)
                call.cancel()
                trio.from_thread.run(
                    idle_within, service.broadcasts["BTCUSDT"], 2.0, trio_token=token
                )
            return trio.from_thread.run_sync(lambda: len(sockets[0]._streams), trio_token=token)

    # purerpc's table of the connection's streams holds the running call only.
    assert await trio.to_thread.run_sync(scenario) == 1


async def test_only_listeners_that_opt_in_share_a_port(nursery: trio.Nursery) -> None:
    service = server.OrderbookService({"ETHBTC": Broadcast[PublishedSummary]()}, "ETHBTC")
    serve = functools.partial(server.serve_grpc, [service], "127.0.0.1")
    port = await nursery.start(functools.partial(serve, 0, reuse_port=True))
    # A second worker of `serve --workers` joins the port...
    assert await nursery.start(functools.partial(serve, port, reuse_port=True)) == port
    # ...but a server that did not opt in is refused, as it would be by a lone server.
    with pytest.raises(OSError, match="in use"):
        await serve(port)
    nursery.cancel_scope.cancel()


async def test_a_lone_server_keeps_its_port_to_itself(nursery: trio.Nursery) -> None:
    service = server.OrderbookService({"ETHBTC": Broadcast[PublishedSummary]()}, "ETHBTC")
    serve = functools.partial(server.serve_grpc, [service], "127.0.0.1")
    port = await nursery.start(serve, 0)
    with pytest.raises(OSError, match="in use"):
        await serve(port, reuse_port=True)
    nursery.cancel_scope.cancel()
