"""The gateway's reflection service without a server: the exposed API rewritten from the
descriptor set (methods and services left out, comments still on what they were written for),
and the answers to reflection requests."""

from __future__ import annotations

import re

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from shopmesh.reflection.api import (
    ApiError,
    exposed_api,
    exposed_methods,
    method_paths,
    parse_method_paths,
    read_descriptor_set,
)
from shopmesh.reflection.servicer import ExposedReflection
from tests.support.paths import DESCRIPTOR_SET, TOPOLOGY

CONTRACTS = read_descriptor_set(DESCRIPTOR_SET)
EXPOSED = exposed_methods(TOPOLOGY)
PAYMENTS = "shop.payments.v1.PaymentsService"


def method_comments(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    """`pkg.Service.Method` -> its leading comment, from each file's source info."""
    comments = {}
    for file in files:
        for location in file.source_code_info.location:
            path = list(location.path)
            if len(path) == 4 and path[0] == 6 and path[2] == 2:
                service = file.service[path[1]]
                name = f"{file.package}.{service.name}.{service.method[path[3]].name}"
                comments[name] = location.leading_comments
    return comments


def services_of(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, list[str]]:
    return {
        f"{file.package}.{service.name}": [method.name for method in service.method]
        for file in files
        for service in file.service
    }


def test_only_exposed_services_and_methods_remain() -> None:
    api = exposed_api(CONTRACTS, EXPOSED)

    kept = {service: set(methods) for service, methods in services_of(api).items()}
    assert kept == {service: set(methods) for service, methods in EXPOSED.items()}
    assert "Charge" in services_of(list(CONTRACTS.file))[PAYMENTS]
    # Every file stays (messages, imports); only services lost what is not exposed.
    assert [file.name for file in api] == [file.name for file in CONTRACTS.file]


def test_every_kept_method_keeps_its_own_comment() -> None:
    before = method_comments(list(CONTRACTS.file))
    after = method_comments(exposed_api(CONTRACTS, EXPOSED))

    assert set(after) == {f"{s}.{m}" for s, methods in EXPOSED.items() for m in methods}
    # GetPayment follows Charge and Refund in the contract: renumbered, its comment follows.
    assert after == {name: before[name] for name in after}
    assert "one of the caller's payments" in after[f"{PAYMENTS}.GetPayment"]


def test_a_service_with_nothing_exposed_is_left_out() -> None:
    api = exposed_api(CONTRACTS, {PAYMENTS: ("GetPayment",)})

    assert services_of(api) == {PAYMENTS: ["GetPayment"]}
    locations = [list(loc.path) for file in api for loc in file.source_code_info.location]
    payments = next(file for file in api if file.package == "shop.payments.v1")
    assert all(path[1] < len(payments.service) for path in locations if path[:1] == [6])


@pytest.mark.parametrize(
    ("exposed", "message"),
    [
        ({PAYMENTS: ("Pay",)}, f"{PAYMENTS} has no method Pay"),
        ({"shop.gifts.v1.GiftsService": ("Give",)}, "no service shop.gifts.v1.GiftsService"),
    ],
)
def test_an_exposed_method_the_contracts_lack_is_an_error(
    exposed: dict[str, tuple[str, ...]], message: str
) -> None:
    with pytest.raises(ApiError, match=re.escape(message)):
        exposed_api(CONTRACTS, exposed)


def test_method_paths_read_back_as_written() -> None:
    assert parse_method_paths(method_paths(EXPOSED)) == EXPOSED
    with pytest.raises(ApiError, match=re.escape("expected package.Service/Method")):
        parse_method_paths([PAYMENTS])


Request = reflection_pb2.ServerReflectionRequest


def ask(request: reflection_pb2.ServerReflectionRequest) -> reflection_pb2.ServerReflectionResponse:
    reflection = ExposedReflection(exposed_api(CONTRACTS, EXPOSED), list(EXPOSED))
    return reflection.answer(request)


def test_list_services_lists_exactly_the_exposed_services() -> None:
    listed = ask(Request(list_services="")).list_services_response.service
    assert [service.name for service in listed] == sorted(EXPOSED)


def test_a_method_symbol_finds_its_file_with_comments_and_imports() -> None:
    files = ask(Request(file_containing_symbol=f"{PAYMENTS}.GetPayment")).file_descriptor_response
    protos = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in files.file_descriptor_proto]

    assert protos[0].name == "shop/payments/v1/payments.proto"
    assert protos[0].source_code_info.location
    assert set(protos[0].dependency) <= {proto.name for proto in protos}


@pytest.mark.parametrize(
    "asked",
    [
        Request(file_containing_symbol=f"{PAYMENTS}.Charge"),
        Request(file_containing_symbol="shop.nothing.Here"),
        Request(file_by_filename="shop/gifts/v1/gifts.proto"),
    ],
    ids=["unexposed-method", "unknown-symbol", "unknown-file"],
)
def test_what_is_not_exposed_is_not_found(asked: reflection_pb2.ServerReflectionRequest) -> None:
    error = ask(asked).error_response
    assert error.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert error.error_message.startswith("the gateway's API has no ")
