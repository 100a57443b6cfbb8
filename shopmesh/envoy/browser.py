"""What a browser needs at the gateway: gRPC-Web, the protocol of a page's fetch() (Envoy's
grpc_web filter turns it into gRPC and the answer back into gRPC-Web); the storefront's files
(web/, built by `make web`) at `/`, which makes the storefront's calls same-origin; and CORS
for the pages of the origins `gateway.cors.allowed_origins` lists, when it lists any."""

from __future__ import annotations

from pathlib import Path

from shopmesh.envoy.builders import Json, typed
from shopmesh.envoy.upstream import cluster_name
from shopmesh.topology import Topology

GRPC_WEB = "envoy.filters.http.grpc_web"
CORS = "envoy.filters.http.cors"
STOREFRONT_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
"""Path -> the storefront's file (in the layout's storefront directory) and its media type."""
MAX_STOREFRONT_FILE_BYTES = 1024 * 1024
"""The largest storefront file the gateway serves (Envoy's own limit on a direct response read
from a file is 4 KiB). Raised knowingly: Envoy reads each file once, when it loads its
configuration, and keeps it in memory; the bundle is about a tenth of this."""
EXPOSED_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin"
"""What a page of another origin may read of an answer: a gRPC-Web client needs these to see
how a call ended, and its error details."""
ALLOWED_REQUEST_HEADERS = (
    "content-type,x-grpc-web,x-user-agent,grpc-timeout,authorization,connect-protocol-version"
)
# A page of the storefront may only do what it was served to do.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def grpc_web_filter() -> Json:
    """First in the chain: every filter after it, and every refusal one of them makes (a
    local reply, encoded back through this filter), sees a gRPC call and answers gRPC, which
    this filter makes gRPC-Web again for a gRPC-Web caller."""
    return {
        "name": GRPC_WEB,
        "typed_config": typed("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
    }


def cors_filters(topology: Topology) -> list[Json]:
    """Envoy's CORS filter when other origins are allowed (their policy is the default virtual
    host's: cors_policy); none otherwise, so no answer carries CORS headers."""
    if not topology.gateway.cors_allowed_origins:
        return []
    return [{"name": CORS, "typed_config": typed("envoy.extensions.filters.http.cors.v3.Cors")}]


def cors_policy(topology: Topology) -> Json:
    """The typed_per_filter_config of the default virtual host, where browsers' calls go."""
    origins = topology.gateway.cors_allowed_origins
    if not origins:
        return {}
    policy = typed(
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=[{"exact": origin} for origin in origins],
        allow_methods="POST",
        allow_headers=ALLOWED_REQUEST_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age="600",
        forward_not_matching_preflights=False,
    )
    return {CORS: policy}


def _header(key: str, value: str) -> Json:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _off(filters: list[str]) -> Json:
    return {name: typed("envoy.config.route.v3.FilterConfig", disabled=True) for name in filters}


def storefront_routes(topology: Topology, directory: Path, checks: list[str]) -> list[Json]:
    """GET of each storefront file, answered by the gateway itself from `directory`; with
    CORS on, the preflight of any path (the CORS filter answers it: with CORS headers for an
    allowed origin, without for another, which the browser reads as a refusal). `checks` are
    the filters of a call's checks (the content type's first, then the concurrency
    controller's): off on these routes, which carry no call."""
    routes: list[Json] = [
        {
            "name": f"storefront{path}",
            "match": {
                "path": path,
                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
            },
            "direct_response": {"status": 200, "body": {"filename": str(directory / file)}},
            "response_headers_to_add": [
                _header("content-type", media_type),
                *(_header(key, value) for key, value in SECURITY_HEADERS.items()),
            ],
            "typed_per_filter_config": _off(checks),
        }
        for path, (file, media_type) in STOREFRONT_FILES.items()
    ]
    if topology.gateway.cors_allowed_origins:
        # The CORS filter answers every preflight itself (forward_not_matching_preflights off),
        # but only on a route that forwards: it stands aside on a direct response. Nothing
        # reaches the cluster: another OPTIONS meets the content-type check (kept on) first.
        routes.append(
            {
                "name": "cors.preflight",
                "match": {
                    "prefix": "/",
                    "headers": [{"name": ":method", "string_match": {"exact": "OPTIONS"}}],
                },
                "route": {"cluster": cluster_name(next(iter(topology.gateway.exposes)))},
                "typed_per_filter_config": _off(checks[1:]),
            }
        )
    return routes
