"""Orders wiring without a network: gRPC errors -> domain errors, and settings from the env."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from services.common.config import ConfigError
from services.common.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.status import to_grpc_status
from services.orders.app import UPSTREAM_NAMES, OrdersSettings
from services.orders.clients import to_domain_error
from tests.support.paths import TOPOLOGY


def rpc_error(error: DomainError) -> aio.AioRpcError:
    """The AioRpcError a client sees when a shopmesh server raises `error`."""
    status = to_grpc_status(error)
    return aio.AioRpcError(
        status.code,
        aio.Metadata(),
        aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


def bare_error(code: grpc.StatusCode) -> aio.AioRpcError:
    """A failed call without rich details, as a proxy or the gRPC library itself reports it."""
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details="no route")


@pytest.mark.parametrize(
    "raised",
    [
        NotFound("no user", reason="USER_NOT_FOUND", metadata={"user_id": "u1"}),
        FailedPrecondition("declined", reason="CARD_DECLINED", metadata={"decline_code": "x"}),
        AlreadyExists("reused", reason="IDEMPOTENCY_KEY_REUSED"),
    ],
)
def test_business_errors_keep_their_type_reason_and_metadata(raised: DomainError) -> None:
    translated = to_domain_error("upstream", rpc_error(raised))

    assert type(translated) is type(raised)
    assert translated.reason == raised.reason
    assert translated.metadata == raised.metadata
    assert translated.message == f"upstream: {raised.message}"


def test_invalid_argument_keeps_its_field_violations() -> None:
    raised = InvalidArgument(
        "bad", violations=[FieldViolation("payment_token", "unknown test token")]
    )

    translated = to_domain_error("payments", rpc_error(raised))

    assert isinstance(translated, InvalidArgument)
    assert translated.violations == raised.violations


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.PERMISSION_DENIED,
    ],
)
def test_other_codes_are_unavailable_naming_the_upstream(code: grpc.StatusCode) -> None:
    translated = to_domain_error("inventory", bare_error(code))

    assert isinstance(translated, Unavailable)
    assert translated.reason == "UPSTREAM_UNAVAILABLE"
    assert translated.metadata == {"upstream": "inventory", "code": code.name}


def test_not_found_without_details_still_is_not_found() -> None:
    translated = to_domain_error("users", bare_error(grpc.StatusCode.NOT_FOUND))

    assert isinstance(translated, NotFound)
    assert translated.reason == "NOT_FOUND"


def test_settings_default_when_unset() -> None:
    assert OrdersSettings.from_env({}) == OrdersSettings()


def test_settings_are_read_from_the_environment() -> None:
    settings = OrdersSettings.from_env(
        {
            "SHOPMESH_ORDERS_RECOVERY_INTERVAL": "0.5",
            "SHOPMESH_ORDERS_PENDING_TIMEOUT": "60",
            "SHOPMESH_ORDERS_RELAY_POLL_INTERVAL": "0.25",
            "SHOPMESH_ORDERS_RELAY_MAX_BACKOFF": "3",
        }
    )

    assert settings == OrdersSettings(0.5, 60.0, 0.25, 3.0)


def test_malformed_setting_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="SHOPMESH_ORDERS_RECOVERY_INTERVAL"):
        OrdersSettings.from_env({"SHOPMESH_ORDERS_RECOVERY_INTERVAL": "soon"})


def test_the_services_orders_wires_up_are_the_ones_the_topology_lets_it_call() -> None:
    # The topology is the list of services; orders' wiring only names the ones it calls, and
    # the sidecar lets it reach exactly those.
    assert set(UPSTREAM_NAMES) == set(TOPOLOGY.services["orders"].calls)
