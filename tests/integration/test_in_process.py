"""The service run in the test's own trio loop, where its internals can be observed."""

from __future__ import annotations

import functools

import grpc
import trio

from aggtrio._proto.orderbook_pb2 import Summary, SummaryRequest
from aggtrio.app import RunningService, run_service
from aggtrio.config import ServeConfig
from aggtrio.feed import FeedState
from aggtrio.simulator import SimulatedVenue


async def start(nursery: trio.Nursery, sims: dict[str, SimulatedVenue]) -> RunningService:
    config = ServeConfig(
        port=0,
        symbols=("ETHBTC",),
        venue_urls={name: sim.url for name, sim in sims.items()},
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
