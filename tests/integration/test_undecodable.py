"""A request whose bytes are not its request message, to every method of every service on the
real servers (unary, server-streaming, the bidirectional reflection stream, health):
INVALID_ARGUMENT with an ErrorInfo MALFORMED_REQUEST naming the method, never UNKNOWN with a
Python exception class in the message."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from services.common.errors import ERROR_DOMAIN
from tests.support.calls import MALFORMED, call_raw_any, method_path
from tests.support.errors import expect_error_info
from tests.support.shop import Shop

pytestmark = pytest.mark.asyncio

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


async def test_undecodable_requests_to_every_method_are_malformed_request(
    shop: Shop, channels: Callable[[str], aio.Channel]
) -> None:
    kinds = set()
    for running in shop.running.values():
        channel = channels(running.address)
        registered = [registration.service_name for registration in running.app.registrations]
        for service in [*registered, HEALTH, reflection.SERVICE_NAME]:
            for method in descriptor_pool.Default().FindServiceByName(service).methods:
                with pytest.raises(aio.AioRpcError) as raised:
                    await call_raw_any(channel, method, MALFORMED, within=5)
                info = expect_error_info(raised.value, grpc.StatusCode.INVALID_ARGUMENT)
                assert (info.reason, info.domain) == ("MALFORMED_REQUEST", ERROR_DOMAIN)
                path = method_path(method)
                assert dict(info.metadata) == {"method": path}
                details = raised.value.details() or ""
                assert path in details
                assert "class" not in details
                assert "DecodeError" not in details
                kinds.add((method.client_streaming, method.server_streaming))
    # Unary, server-streaming (WatchNotifications, Health.Watch), bidirectional (reflection).
    assert kinds == {(False, False), (False, True), (True, True)}
