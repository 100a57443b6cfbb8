"""The exposed API as descriptors: the contracts' descriptor set with every service and method
that `gateway.exposes` leaves out removed, and its source info (the comments) renumbered so
that every comment still belongs to the element it was written for. Messages stay whole (a
type may be shared by exposed and unexposed methods, and a type calls nothing), but for their
fields' JSON names (_drop_json_names)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

from shopmesh.topology import Topology

SERVICE_FIELD = descriptor_pb2.FileDescriptorProto.SERVICE_FIELD_NUMBER
METHOD_FIELD = descriptor_pb2.ServiceDescriptorProto.METHOD_FIELD_NUMBER

Exposed = Mapping[str, Sequence[str]]
"""Full gRPC service name (`shop.users.v1.UsersService`) -> its exposed method names."""


class ApiError(ValueError):
    """The exposed methods do not match the descriptor set; the message names what is missing."""


def exposed_methods(topology: Topology) -> dict[str, tuple[str, ...]]:
    """`gateway.exposes` by full gRPC service name."""
    return {
        topology.services[service].grpc_service: methods
        for service, methods in topology.gateway.exposes.items()
    }


def method_paths(exposed: Exposed) -> list[str]:
    """`pkg.Service/Method` of every exposed method: how the command line names them."""
    return [f"{service}/{method}" for service, methods in exposed.items() for method in methods]


def parse_method_paths(paths: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The inverse of `method_paths`."""
    exposed: dict[str, list[str]] = {}
    for path in paths:
        service, slash, method = path.partition("/")
        if not (service and slash and method) or "/" in method:
            raise ApiError(f"{path!r} is not a method: expected package.Service/Method")
        exposed.setdefault(service, []).append(method)
    return {service: tuple(methods) for service, methods in exposed.items()}


def _full_name(file: descriptor_pb2.FileDescriptorProto, name: str) -> str:
    return f"{file.package}.{name}" if file.package else name


def exposed_file(
    file: descriptor_pb2.FileDescriptorProto, exposed: Exposed
) -> descriptor_pb2.FileDescriptorProto:
    """A copy of `file` with only the exposed services and methods, and the comments of what
    is kept at the indexes it is kept at."""
    kept = descriptor_pb2.FileDescriptorProto()
    kept.CopyFrom(file)
    del kept.service[:]
    new_service: dict[int, int] = {}
    new_method: dict[tuple[int, int], int] = {}
    for s, service in enumerate(file.service):
        methods = exposed.get(_full_name(file, service.name))
        if not methods:
            continue
        new_service[s] = len(kept.service)
        copy = kept.service.add()
        copy.CopyFrom(service)
        del copy.method[:]
        for m, method in enumerate(service.method):
            if method.name in methods:
                new_method[s, m] = len(copy.method)
                copy.method.add().CopyFrom(method)
    for message in kept.message_type:
        _drop_json_names(message)
    del kept.source_code_info.location[:]
    for location in file.source_code_info.location:
        path = list(location.path)
        if len(path) >= 2 and path[0] == SERVICE_FIELD:
            s = path[1]
            if s not in new_service:
                continue
            path[1] = new_service[s]
            if len(path) >= 4 and path[2] == METHOD_FIELD:
                if (s, path[3]) not in new_method:
                    continue
                path[3] = new_method[s, path[3]]
        copy_location = kept.source_code_info.location.add()
        copy_location.CopyFrom(location)
        copy_location.path[:] = path
    return kept


def _drop_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    """Leave each field's JSON name to the client, as the apps' own reflection (grpcio's) does:
    grpcurl prints the JSON names it is given, so with protoc's `displayName` its output would
    change from `display_name` under the scripts that read it (`session.access_token`)."""
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _drop_json_names(nested)


def exposed_api(
    descriptor_set: descriptor_pb2.FileDescriptorSet, exposed: Exposed
) -> list[descriptor_pb2.FileDescriptorProto]:
    """Every file of `descriptor_set` (dependencies first, as protoc writes them) rewritten to
    `exposed`. ApiError if an exposed service or method is not in the set."""
    defined = {
        _full_name(file, service.name): {method.name for method in service.method}
        for file in descriptor_set.file
        for service in file.service
    }
    for service, methods in exposed.items():
        if service not in defined:
            raise ApiError(f"the descriptor set has no service {service}")
        missing = [method for method in methods if method not in defined[service]]
        if missing:
            raise ApiError(f"{service} has no method {', '.join(missing)} in the descriptor set")
    return [exposed_file(file, exposed) for file in descriptor_set.file]


def read_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set at `path` (gen/shop.pb, `make generate`)."""
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def reflection_args(topology: Topology, socket: Path, descriptor_set: Path) -> list[str]:
    """The reflection service's command line after `python -m`: listening on `socket`, for
    `gateway.exposes` of `descriptor_set`."""
    exposes = [f"--expose={path}" for path in method_paths(exposed_methods(topology))]
    return ["shopmesh.reflection", f"unix:{socket}", str(descriptor_set), *exposes]
