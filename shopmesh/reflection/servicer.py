"""Server reflection answered from the exposed API's descriptors (shopmesh.reflection.api),
served under both grpc.reflection.v1alpha and grpc.reflection.v1.

Not grpcio-reflection's servicer: it serializes each file from a descriptor pool
(`CopyToProto`), which drops the source info, so `describe` would show no comments. This one
finds symbols in a pool but answers with the files as they were given, comments included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2

from shopmesh.topology import REFLECTION_SERVICES

REFLECTION_METHOD = "ServerReflectionInfo"

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse


class ExposedReflection:
    """ServerReflectionInfo over `files` (dependencies first), listing `services`."""

    def __init__(
        self, files: Sequence[descriptor_pb2.FileDescriptorProto], services: Sequence[str]
    ) -> None:
        self._pool = descriptor_pool.DescriptorPool()
        for file in files:
            self._pool.Add(file)
        self._files = {file.name: file.SerializeToString() for file in files}
        self._imports = {file.name: tuple(file.dependency) for file in files}
        self._services = sorted(services)

    async def ServerReflectionInfo(
        self, requests: AsyncIterator[Request], context: aio.ServicerContext[Request, Response]
    ) -> AsyncIterator[Response]:
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: Request) -> Response:
        """The response to one request of a reflection stream."""
        asked = request.WhichOneof("message_request")
        try:
            if asked == "list_services":
                listed = [reflection_pb2.ServiceResponse(name=name) for name in self._services]
                return Response(
                    original_request=request,
                    list_services_response=reflection_pb2.ListServiceResponse(service=listed),
                )
            if asked == "file_by_filename":
                return self._file_response(request, request.file_by_filename)
            if asked == "file_containing_symbol":
                return self._file_response(request, self._file_of(request.file_containing_symbol))
            if asked == "file_containing_extension":
                extension = request.file_containing_extension
                message = self._pool.FindMessageTypeByName(extension.containing_type)
                field = self._pool.FindExtensionByNumber(message, extension.extension_number)
                found = self._pool.FindFileContainingSymbol(field.full_name)
                return self._file_response(request, found.name)
            if asked == "all_extension_numbers_of_type":
                message = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = sorted(field.number for field in self._pool.FindAllExtensions(message))
                return Response(
                    original_request=request,
                    all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                        base_type_name=message.full_name, extension_number=numbers
                    ),
                )
        except KeyError:
            missing = f"the gateway's API has no {_what(request)}"
            return _error(request, grpc.StatusCode.NOT_FOUND, missing)
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT, "the request asks for nothing")

    def _file_of(self, symbol: str) -> str:
        """The file that defines `symbol` (KeyError if none)."""
        try:
            return str(self._pool.FindFileContainingSymbol(symbol).name)
        except KeyError:
            # The pool does not find methods (`describe pkg.Service.Method`): their service does.
            service, _, method = symbol.rpartition(".")
            found = self._pool.FindServiceByName(service)
            if method not in found.methods_by_name:
                raise
            return str(found.file.name)

    def _file_response(self, request: Request, name: str) -> Response:
        """`name` and every file it imports, transitively (KeyError if there is no `name`)."""
        order = [name]
        for file in order:
            order += [imported for imported in self._imports[file] if imported not in order]
        return Response(
            original_request=request,
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=[self._files[file] for file in order]
            ),
        )


def _what(request: Request) -> str:
    asked = request.WhichOneof("message_request")
    if asked == "file_containing_extension":
        extension = request.file_containing_extension
        return f"extension {extension.extension_number} of {extension.containing_type}"
    names = {"file_by_filename": "file", "all_extension_numbers_of_type": "message"}
    return f"{names.get(asked or '', 'symbol')} {getattr(request, asked or '')}"


def _error(request: Request, code: grpc.StatusCode, message: str) -> Response:
    return Response(
        original_request=request,
        error_response=reflection_pb2.ErrorResponse(
            error_code=code.value[0], error_message=message
        ),
    )


def add_reflection(servicer: ExposedReflection, server: aio.Server) -> None:
    """Serve `servicer` as v1alpha and as v1: v1 is v1alpha renamed, the same messages field
    for field, so one handler with v1alpha's message classes serves both."""
    handler: Any = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=Request.FromString,
        response_serializer=Response.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, {REFLECTION_METHOD: handler})
            for name in REFLECTION_SERVICES
        ]
    )
