"""gRPC server reflection (grpc.reflection.v1 and v1alpha), so that grpcurl and other generic
clients can list and call the service without its .proto files.

Both versions have the same messages under different packages: v1 is current, v1alpha is
what older grpcurl builds and many other clients still ask for. The answers are built once
from the generated modules' file descriptors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from types import ModuleType
from typing import Any

import purerpc

from aggtrio._proto.grpc.reflection.v1 import reflection_grpc as v1_grpc
from aggtrio._proto.grpc.reflection.v1 import reflection_pb2 as v1_pb2
from aggtrio._proto.grpc.reflection.v1alpha import reflection_grpc as v1alpha_grpc
from aggtrio._proto.grpc.reflection.v1alpha import reflection_pb2 as v1alpha_pb2

# protobuf ships no type stubs: its descriptors are Any to mypy.
FileDescriptor = Any
Descriptor = Any

# grpc status codes carried in ErrorResponse.error_code.
_NOT_FOUND = 5
_INVALID_ARGUMENT = 3


class ReflectionIndex:
    """The files a server's services are declared in, by file name and by symbol."""

    def __init__(self, services: Sequence[str], files: Iterable[FileDescriptor]) -> None:
        self.services = tuple(services)
        self._files: dict[str, FileDescriptor] = {}
        self._by_symbol: dict[str, FileDescriptor] = {}
        self._messages: set[str] = set()
        for file in files:
            self._add(file)

    def _add(self, file: FileDescriptor) -> None:
        if file.name in self._files:
            return
        self._files[file.name] = file
        for dependency in file.dependencies:
            self._add(dependency)
        for message in file.message_types_by_name.values():
            self._add_message(message, file)
        for enum in file.enum_types_by_name.values():
            self._by_symbol[enum.full_name] = file
        for service in file.services_by_name.values():
            self._by_symbol[service.full_name] = file
            for method in service.methods:
                self._by_symbol[method.full_name] = file

    def _add_message(self, message: Descriptor, file: FileDescriptor) -> None:
        self._by_symbol[message.full_name] = file
        self._messages.add(message.full_name)
        for enum in message.enum_types:
            self._by_symbol[enum.full_name] = file
        for nested in message.nested_types:
            self._add_message(nested, file)

    def file_by_name(self, name: str) -> FileDescriptor | None:
        return self._files.get(name)

    def file_containing(self, symbol: str) -> FileDescriptor | None:
        return self._by_symbol.get(symbol.removeprefix("."))

    def is_message(self, name: str) -> bool:
        return name.removeprefix(".") in self._messages

    def with_dependencies(self, file: FileDescriptor) -> list[bytes]:
        """The file's serialized FileDescriptorProto, then every file it imports."""
        ordered: list[FileDescriptor] = []

        def visit(current: FileDescriptor) -> None:
            if current not in ordered:
                ordered.append(current)
                for dependency in current.dependencies:
                    visit(dependency)

        visit(file)
        return [current.serialized_pb for current in ordered]


def answer(index: ReflectionIndex, pb2: ModuleType, request: Any) -> Any:
    """The ServerReflectionResponse (of `pb2`'s version) to one request."""
    response = pb2.ServerReflectionResponse(valid_host=request.host, original_request=request)
    kind = request.WhichOneof("message_request")
    file: FileDescriptor | None = None
    if kind == "list_services":
        for name in index.services:
            response.list_services_response.service.add(name=name)
        return response
    if kind == "file_by_filename":
        file = index.file_by_name(request.file_by_filename)
        missing = f"file {request.file_by_filename!r} not found"
    elif kind == "file_containing_symbol":
        file = index.file_containing(request.file_containing_symbol)
        missing = f"symbol {request.file_containing_symbol!r} not found"
    elif kind == "file_containing_extension":
        # No file of ours declares an extension.
        extension = request.file_containing_extension
        missing = (
            f"extension {extension.extension_number} of {extension.containing_type!r} not found"
        )
    elif kind == "all_extension_numbers_of_type":
        name = request.all_extension_numbers_of_type
        if index.is_message(name):
            response.all_extension_numbers_response.base_type_name = name
            return response
        missing = f"type {name!r} not found"
    else:
        response.error_response.error_code = _INVALID_ARGUMENT
        response.error_response.error_message = "the request names no question"
        return response
    if file is None:
        response.error_response.error_code = _NOT_FOUND
        response.error_response.error_message = missing
        return response
    response.file_descriptor_response.file_descriptor_proto.extend(index.with_dependencies(file))
    return response


class ReflectionV1(v1_grpc.ServerReflectionServicer):
    def __init__(self, index: ReflectionIndex) -> None:
        self._index = index

    async def ServerReflectionInfo(  # type: ignore[override]
        self, input_messages: AsyncIterator[v1_pb2.ServerReflectionRequest]
    ) -> AsyncIterator[v1_pb2.ServerReflectionResponse]:
        async for request in input_messages:
            yield answer(self._index, v1_pb2, request)


class ReflectionV1Alpha(v1alpha_grpc.ServerReflectionServicer):
    def __init__(self, index: ReflectionIndex) -> None:
        self._index = index

    async def ServerReflectionInfo(  # type: ignore[override]
        self, input_messages: AsyncIterator[v1alpha_pb2.ServerReflectionRequest]
    ) -> AsyncIterator[v1alpha_pb2.ServerReflectionResponse]:
        async for request in input_messages:
            yield answer(self._index, v1alpha_pb2, request)


def reflection_services(
    servicers: Sequence[purerpc.Servicer], files: Iterable[FileDescriptor]
) -> list[purerpc.Servicer]:
    """Reflection servicers (both versions) describing `servicers` and themselves.

    `files` are the descriptors of the files that declare `servicers`.
    """
    own_files = [v1_pb2.DESCRIPTOR, v1alpha_pb2.DESCRIPTOR]
    names = [servicer.service.name for servicer in servicers]
    names += [
        v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
        v1alpha_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
    ]
    index = ReflectionIndex(sorted(names), [*files, *own_files])
    return [ReflectionV1(index), ReflectionV1Alpha(index)]
