"""`aggtrio serve` as operators run it: Prometheus metrics, gRPC health checks and server
reflection, each through the client a real deployment would use (an HTTP scrape, grpcio's
health and reflection clients)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from prometheus_client.parser import text_string_to_metric_families

from aggtrio._proto.grpc.reflection.v1 import reflection_pb2 as reflection_v1
from aggtrio.simulator import SimulatedVenue

from .harness import (
    ServerProcess,
    first_summary,
    purerpc_stream,
    running_server,
    venue_url_args,
)

METRICS_LINE = r"metrics at http://\S+:(\d+)/metrics"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def observed(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> AsyncIterator[tuple[ServerProcess, int]]:
    """A server on both simulators with metrics on a free port: (server, metrics port)."""
    args = ["--symbols", "ETHBTC,BTCUSDT", "--metrics-port", "0", *venue_url_args(simulators)]
    async with running_server(nursery, args) as server:
        _, match = await server.wait_for_line(METRICS_LINE)
        yield server, int(match.group(1))


def scrape(port: int, path: str = "/metrics") -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape_until(port: int, done: Callable[[Samples], bool], within: float = 15.0) -> Samples:
    with trio.fail_after(within):
        while True:
            samples = await trio.to_thread.run_sync(scrape, port)
            if done(samples):
                return samples
            await trio.sleep(0.1)


async def test_metrics_report_venues_symbols_subscribers_and_latency(
    observed: tuple[ServerProcess, int], simulators: dict[str, SimulatedVenue]
) -> None:
    server, metrics_port = observed
    # Feeds report live as they hand their first book on, the aggregator merges it a moment
    # later: wait for both.
    live = await scrape_until(
        metrics_port,
        lambda s: (
            all(
                value(s, "aggtrio_venue_state", venue=venue, state="live") == 1
                for venue in ("binance", "bitstamp")
            )
            and value(s, "aggtrio_live_venues", symbol="ETHBTC") == 2
            and value(s, "aggtrio_serving") == 1
        ),
    )
    assert value(live, "aggtrio_venue_state", venue="binance", state="backing_off") == 0
    assert 0 <= value(live, "aggtrio_venue_last_message_age_seconds", venue="binance") < 5

    # Values move: more messages and summaries, a subscriber while a stream is open.
    subscribed = trio.Event()
    release = trio.Event()

    async def subscribe(summary: object) -> bool:
        subscribed.set()
        await release.wait()
        return True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(purerpc_stream, server.port, "BTCUSDT", subscribe)
        await subscribed.wait()
        during = await scrape_until(
            metrics_port, lambda s: value(s, "aggtrio_subscribers", symbol="BTCUSDT") == 1
        )
        assert value(during, "aggtrio_open_streams") == 1
        release.set()
    later = await scrape_until(
        metrics_port,
        lambda s: (
            value(s, "aggtrio_venue_messages_total", venue="bitstamp")
            > value(live, "aggtrio_venue_messages_total", venue="bitstamp")
            and value(s, "aggtrio_summaries_published_total", symbol="ETHBTC")
            > value(live, "aggtrio_summaries_published_total", symbol="ETHBTC")
            and value(s, "aggtrio_subscribers", symbol="BTCUSDT") == 0
        ),
    )
    for symbol in ("ETHBTC", "BTCUSDT"):
        published = value(later, "aggtrio_summaries_published_total", symbol=symbol)
        assert published > 0
        # Every published summary is in the latency histogram, and took under a second.
        count = value(later, "aggtrio_publish_latency_seconds_count", symbol=symbol)
        assert count == published
        assert value(later, "aggtrio_publish_latency_seconds_bucket", symbol=symbol, le="1.0") == (
            count
        )
        assert 0 < value(later, "aggtrio_publish_latency_seconds_sum", symbol=symbol) < count
    assert value(later, "aggtrio_venue_malformed_messages_total", venue="binance") == 0

    # A venue outage shows as a state, a reconnect, and one venue fewer in the book.
    before = value(later, "aggtrio_venue_reconnects_total", venue="binance")
    await simulators["binance"].kill()
    # (The book loses the venue first, then the feed leaves the live state: two scrapes
    # may fall between.)
    await scrape_until(
        metrics_port,
        lambda s: (
            value(s, "aggtrio_live_venues", symbol="ETHBTC") == 1
            and value(s, "aggtrio_venue_state", venue="binance", state="live") == 0
        ),
    )
    await simulators["binance"].restart()
    back = await scrape_until(
        metrics_port, lambda s: value(s, "aggtrio_live_venues", symbol="ETHBTC") == 2
    )
    assert value(back, "aggtrio_venue_reconnects_total", venue="binance") > before


async def test_the_metrics_endpoint_answers_only_metrics(
    observed: tuple[ServerProcess, int],
) -> None:
    _, metrics_port = observed

    def status_of(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=10):
                return 200
        except urllib.error.HTTPError as exc:
            return exc.code

    assert await trio.to_thread.run_sync(status_of, "/nothing") == 404
    # OpenMetrics for a scraper that asks for it.
    request = urllib.request.Request(
        f"http://127.0.0.1:{metrics_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )

    def fetch() -> tuple[str, str]:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers["Content-Type"], response.read().decode()

    content_type, body = await trio.to_thread.run_sync(fetch)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    # A client that connects and says nothing does not hold the endpoint up for others.
    idle = await trio.open_tcp_stream("127.0.0.1", metrics_port)
    async with idle:
        assert await trio.to_thread.run_sync(scrape, metrics_port)


def free_port_pair() -> int:
    """A port p such that p and p + 1 are free now."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


async def test_each_worker_serves_its_own_metrics_on_consecutive_ports(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    from .test_workers import two_workers

    base = free_port_pair()
    async with two_workers(nursery, simulators, extra_args=["--metrics-port", str(base)]) as server:
        for index, port in ((1, base), (2, base + 1)):
            await server.wait_for_line(rf"\[worker {index}/2\] .*metrics at http://\S+:{port}/")
            # Each worker is a pipeline of its own, with its own venue connections.
            await scrape_until(
                port, lambda s: value(s, "aggtrio_venue_messages_total", venue="binance") > 0
            )


# --- health -------------------------------------------------------------------------------


async def test_health_follows_the_venues_check_and_watch(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    # One venue: when it is down, ETHBTC has no live venue and the server is NOT_SERVING.
    args = ["--venues", "binance", *venue_url_args({"binance": simulators["binance"]})]
    async with running_server(nursery, args) as server:
        await first_summary(server.port, None, lambda s: bool(s.live_exchanges))
        target = f"127.0.0.1:{server.port}"
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

        def check(service: str) -> int:
            with grpc.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                return int(response.status)

        assert await trio.to_thread.run_sync(check, "") == serving
        assert await trio.to_thread.run_sync(check, "orderbook.OrderbookAggregator") == serving
        with pytest.raises(grpc.RpcError) as unknown:
            await trio.to_thread.run_sync(check, "no.such.Service")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        seen: list[int] = []
        token = trio.lowlevel.current_trio_token()

        def watch() -> None:
            with grpc.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
                for response in call:
                    seen.append(int(response.status))
                    trio.from_thread.run_sync(changed.set, trio_token=token)
                    if seen[-3:] == [serving, not_serving, serving]:
                        call.cancel()
                        return

        changed = trio.Event()

        async def next_status() -> int:
            nonlocal changed
            with trio.fail_after(15):
                await changed.wait()
            changed = trio.Event()
            return seen[-1]

        async with trio.open_nursery() as watchers:
            watchers.start_soon(trio.to_thread.run_sync, watch)
            assert await next_status() == serving
            await simulators["binance"].kill()
            assert await next_status() == not_serving
            assert await trio.to_thread.run_sync(check, "") == not_serving
            await simulators["binance"].restart()
            assert await next_status() == serving
        assert seen == [serving, not_serving, serving]


async def test_health_watch_of_an_unknown_service_and_shutdown(
    nursery: trio.Nursery, simulators: dict[str, SimulatedVenue]
) -> None:
    async with running_server(nursery, venue_url_args(simulators)) as server:
        await first_summary(server.port, None, lambda s: len(s.live_exchanges) == 2)
        target = f"127.0.0.1:{server.port}"

        def watch(service: str) -> tuple[list[int], grpc.StatusCode]:
            statuses: list[int] = []
            with grpc.insecure_channel(target) as channel:
                call = health_pb2_grpc.HealthStub(channel).Watch(
                    health_pb2.HealthCheckRequest(service=service), timeout=30
                )
                try:
                    for response in call:
                        statuses.append(int(response.status))
                        if len(statuses) == 1:
                            trio.from_thread.run_sync(started.set, trio_token=token)
                except grpc.RpcError as exc:
                    return statuses, exc.code()
            return statuses, grpc.StatusCode.OK

        started = trio.Event()
        token = trio.lowlevel.current_trio_token()
        results: dict[str, tuple[list[int], grpc.StatusCode]] = {}

        async def run(service: str) -> None:
            results[service] = await trio.to_thread.run_sync(watch, service)

        async with trio.open_nursery() as watchers:
            watchers.start_soon(run, "")
            with trio.fail_after(10):
                await started.wait()
            started = trio.Event()
            watchers.start_soon(run, "no.such.Service")
            with trio.fail_after(10):
                await started.wait()
            # Shutting down: watchers learn NOT_SERVING, then the stream ends UNAVAILABLE.
            server.terminate()
        with trio.fail_after(5):
            await server.process.wait()
    statuses = health_pb2.HealthCheckResponse
    assert results[""] == (
        [statuses.SERVING, statuses.NOT_SERVING],
        grpc.StatusCode.UNAVAILABLE,
    )
    assert results["no.such.Service"] == ([statuses.SERVICE_UNKNOWN], grpc.StatusCode.UNAVAILABLE)


# --- reflection ---------------------------------------------------------------------------


async def test_reflection_v1alpha_with_grpcio_reflection_s_client(server: ServerProcess) -> None:
    def describe() -> tuple[list[str], list[str], str]:
        from google.protobuf.descriptor_pool import DescriptorPool

        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            services = list(database.get_services())
            pool = DescriptorPool(database)
            orderbook = pool.FindServiceByName("orderbook.OrderbookAggregator")
            methods = [method.name for method in orderbook.methods]
            summary = pool.FindMessageTypeByName("orderbook.Summary")
            return services, methods, summary.file.name

    services, methods, file_name = await trio.to_thread.run_sync(describe)
    assert sorted(services) == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "orderbook.OrderbookAggregator",
    ]
    assert methods == ["BookSummary", "BookSummaryForSymbol"]
    assert file_name == "orderbook.proto"


async def test_reflection_v1_answers_each_kind_of_question(server: ServerProcess) -> None:
    from google.protobuf import descriptor_pb2

    requests = [
        reflection_v1.ServerReflectionRequest(list_services=""),
        reflection_v1.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
        reflection_v1.ServerReflectionRequest(file_by_filename="orderbook.proto"),
        reflection_v1.ServerReflectionRequest(file_containing_symbol="orderbook.Nothing"),
        reflection_v1.ServerReflectionRequest(all_extension_numbers_of_type="orderbook.Level"),
    ]

    def ask() -> list[Any]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            info = channel.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_v1.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_v1.ServerReflectionResponse.FromString,
            )
            return list(info(iter(requests), timeout=10))

    listing, health, orderbook, missing, extensions = await trio.to_thread.run_sync(ask)
    assert "orderbook.OrderbookAggregator" in {
        service.name for service in listing.list_services_response.service
    }
    health_file = descriptor_pb2.FileDescriptorProto.FromString(
        health.file_descriptor_response.file_descriptor_proto[0]
    )
    assert health_file.name == "grpc/health/v1/health.proto"
    assert [m.name for m in health_file.service[0].method] == ["Check", "List", "Watch"]
    orderbook_file = descriptor_pb2.FileDescriptorProto.FromString(
        orderbook.file_descriptor_response.file_descriptor_proto[0]
    )
    assert orderbook_file.package == "orderbook"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert extensions.all_extension_numbers_response.base_type_name == "orderbook.Level"
    assert list(extensions.all_extension_numbers_response.extension_number) == []
