"""Outgoing channels: one place decides how a service dials its upstreams."""

from __future__ import annotations

from grpc import aio

from services.common.interceptors import CallContextClientInterceptor


def open_channel(address: str) -> aio.Channel:
    """An insecure channel to `address` (`unix:/path` or `host:port`).

    Insecure on purpose: in the mesh the address is the local sidecar's egress socket, and the
    sidecar does mTLS. Every call inherits the incoming request's remaining deadline, its
    request id and the current trace context.
    """
    return aio.insecure_channel(address, interceptors=[CallContextClientInterceptor()])
