"""Server reflection's answers, question by question (no network)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from aggtrio._proto import orderbook_pb2
from aggtrio._proto.grpc.health.v1 import health_pb2
from aggtrio._proto.grpc.reflection.v1 import reflection_pb2 as v1
from aggtrio._proto.grpc.reflection.v1alpha import reflection_pb2 as v1alpha
from aggtrio.reflection import ReflectionIndex, answer

NOT_FOUND = 5


@pytest.fixture
def index() -> ReflectionIndex:
    return ReflectionIndex(
        ["grpc.health.v1.Health", "orderbook.OrderbookAggregator"],
        [orderbook_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR],
    )


def files_in(response: Any) -> list[str]:
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


@pytest.mark.parametrize(
    ("symbol", "file"),
    [
        ("orderbook.OrderbookAggregator", "orderbook.proto"),
        ("orderbook.OrderbookAggregator.BookSummaryForSymbol", "orderbook.proto"),
        ("orderbook.Level", "orderbook.proto"),
        (".orderbook.Summary", "orderbook.proto"),
        # Nested types and enums, as grpcurl asks for a method's response type.
        ("grpc.health.v1.HealthCheckResponse.ServingStatus", "grpc/health/v1/health.proto"),
        ("grpc.health.v1.HealthListResponse.StatusesEntry", "grpc/health/v1/health.proto"),
    ],
)
def test_a_symbol_resolves_to_the_file_that_declares_it(
    index: ReflectionIndex, symbol: str, file: str
) -> None:
    response = answer(index, v1, v1.ServerReflectionRequest(file_containing_symbol=symbol))
    assert files_in(response) == [file]


def test_each_version_answers_in_its_own_messages(index: ReflectionIndex) -> None:
    request = v1alpha.ServerReflectionRequest(host="h", list_services="*")
    response = answer(index, v1alpha, request)
    assert isinstance(response, v1alpha.ServerReflectionResponse)
    assert response.valid_host == "h"
    assert response.original_request == request
    assert [s.name for s in response.list_services_response.service] == [
        "grpc.health.v1.Health",
        "orderbook.OrderbookAggregator",
    ]


def test_file_by_name_and_what_is_not_there(index: ReflectionIndex) -> None:
    found = answer(index, v1, v1.ServerReflectionRequest(file_by_filename="orderbook.proto"))
    assert files_in(found) == ["orderbook.proto"]
    for request in (
        v1.ServerReflectionRequest(file_by_filename="nothing.proto"),
        v1.ServerReflectionRequest(file_containing_symbol="orderbook.Nothing"),
        v1.ServerReflectionRequest(
            file_containing_extension=v1.ExtensionRequest(
                containing_type="orderbook.Level", extension_number=100
            )
        ),
        v1.ServerReflectionRequest(all_extension_numbers_of_type="orderbook.Nothing"),
    ):
        response = answer(index, v1, request)
        assert response.error_response.error_code == NOT_FOUND, request
        assert response.error_response.error_message


def test_a_request_without_a_question_is_invalid(index: ReflectionIndex) -> None:
    response = answer(index, v1, v1.ServerReflectionRequest(host="h"))
    assert response.error_response.error_code == 3  # INVALID_ARGUMENT


def test_dependencies_follow_the_file() -> None:
    # A file that imports another: the answer carries both, the asked-for one first.
    pool_file = descriptor_pb2.FileDescriptorProto(
        name="uses.proto",
        package="uses",
        dependency=["orderbook.proto"],
        message_type=[
            descriptor_pb2.DescriptorProto(
                name="Wrapper",
                field=[
                    descriptor_pb2.FieldDescriptorProto(
                        name="level",
                        number=1,
                        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                        type_name=".orderbook.Level",
                        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                    )
                ],
            )
        ],
        syntax="proto3",
    )
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    orderbook = descriptor_pb2.FileDescriptorProto()
    orderbook_pb2.DESCRIPTOR.CopyToProto(orderbook)
    pool.Add(orderbook)
    pool.Add(pool_file)
    index = ReflectionIndex([], [pool.FindFileByName("uses.proto")])
    response = answer(index, v1, v1.ServerReflectionRequest(file_containing_symbol="uses.Wrapper"))
    assert files_in(response) == ["uses.proto", "orderbook.proto"]
