"""A browser's CORS preflight of a gRPC-Web call to the gateway."""

from __future__ import annotations

import http.client

from shopmesh.local.mesh import RunningMesh
from tests.support.polling import CALL_TIMEOUT

LIST_PRODUCTS = "/shop.inventory.v1.InventoryService/ListProducts"


def preflight(mesh: RunningMesh, origin: str) -> tuple[int, dict[str, str]]:
    """OPTIONS of ListProducts from a page of `origin`: the HTTP status and headers."""
    host, port = mesh.gateway_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=CALL_TIMEOUT)
    try:
        connection.request(
            "OPTIONS",
            LIST_PRODUCTS,
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web,authorization",
            },
        )
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
