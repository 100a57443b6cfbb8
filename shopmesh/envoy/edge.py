"""What the gateway does to a call from outside before it may cost an upstream anything: the one
route matcher of a public method, a check of the content type and of gRPC framing (a Lua
filter), two rate limits (shared, and per source address), adaptive concurrency for the costly
methods, and the reply to every refusal: a gRPC status (or, to a JSON caller, an HTTP status and
a JSON google.rpc.Status) carrying a google.rpc.ErrorInfo reason, and a RetryInfo when waiting
helps.

An error the caller caused must never reach an app as a 5xx: the gateway's outlier detection
would count it against a healthy replica."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from importlib.resources import files

from google.rpc import code_pb2

from shopmesh.envoy.builders import Json, duration, typed
from shopmesh.envoy.metrics import per_client_stat_prefix
from shopmesh.envoy.replies import (
    JSON_CALLER,
    Refusal,
    any_of,
    code_details,
    code_details_prefix,
    grpc_reply,
    http_status,
    json_reply,
    response_flags,
    trailers_only,
)
from shopmesh.envoy.signin import REFUSED_TOKEN, token_refusals
from shopmesh.topology import LocalRateLimit, Topology

INGRESS = "ingress"
ADAPTIVE_CONCURRENCY = "envoy.filters.http.adaptive_concurrency"
RATE_LIMIT_ENABLED = f"{INGRESS}.rate_limit.enabled"
"""The runtime key (a percentage) that switches both rate limits off (a capacity benchmark)."""
ADAPTIVE_CONCURRENCY_ENABLED = f"{INGRESS}.adaptive_concurrency.enabled"
"""The runtime key that switches the controller off (a benchmark of the mesh's own capacity)."""
BUFFER = "envoy.filters.http.buffer"
LUA = "envoy.filters.http.lua"
MAX_CLIENT_BUCKETS = 4096
"""Source addresses with a bucket of their own at once (least recently used are dropped)."""
CONCURRENCY_UPDATE_INTERVAL = "0.25s"
"""How often the adaptive controller re-computes its limit from the latencies it sampled."""


GRPC_WEB_CONTENT_TYPES = r"application/grpc-web(-text)?(\+proto)?"
"""The gRPC-Web content types the grpc_web filter turns into gRPC."""


def grpc_call_match(path: str) -> Json:
    """The route match of a gRPC method, whatever protocol the call came in: gRPC, or JSON,
    which the transcoder has turned into gRPC before routing. A POST of gRPC to exactly
    `path`: Envoy's `path` match alone ignores the query string (`GetProduct?x` would reach the
    app, which answers UNIMPLEMENTED) and admits any verb and body (the app resets a PUT: a
    503). Both are 5xx the gateway's outlier detection counts against the replica."""
    return {
        "path": path,
        "grpc": {},
        "headers": [
            {"name": ":method", "string_match": {"exact": "POST"}},
            {"name": ":path", "string_match": {"exact": path}},
        ],
    }


def public_call_match(path: str) -> Json:
    """The route match of an exposed method: grpc_call_match's, or the same POST of gRPC-Web.

    gRPC-Web by its content type (what `grpc: {}` matches, or a gRPC-Web one): the route is
    chosen before the grpc_web filter runs (to know which filters the route turns on), while
    the call is still gRPC-Web, and is not chosen again once the filter has made it gRPC.
    Reflection and health keep grpc_call_match: reflection is a bidirectional stream, which
    gRPC-Web cannot carry."""
    match = grpc_call_match(path)
    del match["grpc"]
    content_type = rf"application/grpc(\+.+)?|{GRPC_WEB_CONTENT_TYPES}"
    match["headers"].append(
        {"name": "content-type", "string_match": {"safe_regex": {"regex": content_type}}}
    )
    return match


def refusals(topology: Topology) -> dict[str, Refusal]:
    """Every refusal of the gateway by reason."""
    retry_after = topology.gateway.local_rate_limit.fill_interval
    table = [
        Refusal(
            "MALFORMED_MESSAGE",
            code_pb2.INVALID_ARGUMENT,
            400,
            "a unary call must carry exactly one complete length-prefixed gRPC message",
        ),
        Refusal(
            "UNSUPPORTED_MEDIA_TYPE",
            code_pb2.INVALID_ARGUMENT,
            415,
            "send gRPC (content-type: application/grpc), gRPC-Web (application/grpc-web+proto"
            " or application/grpc-web-text) or JSON (application/json)",
        ),
        Refusal(
            "MALFORMED_REQUEST",
            code_pb2.INVALID_ARGUMENT,
            400,
            "the gateway could not read this request",
        ),
        Refusal(
            "REQUEST_TOO_LARGE",
            code_pb2.RESOURCE_EXHAUSTED,
            413,
            f"a request body may have at most {topology.gateway.limits.max_request_bytes} bytes",
        ),
        Refusal(
            "RATE_LIMITED",
            code_pb2.RESOURCE_EXHAUSTED,
            429,
            "too many calls: the gateway's rate limit refused this one",
            retry_after,
        ),
        Refusal(
            "OVERLOADED",
            code_pb2.RESOURCE_EXHAUSTED,
            503,
            "the service is at its capacity: this call was refused rather than queued",
            retry_after,
        ),
        Refusal(
            "UNKNOWN_METHOD",
            code_pb2.UNIMPLEMENTED,
            404,
            "the gateway serves no such method (grpcurl ... list shows those it serves)",
        ),
        Refusal(
            "UPSTREAM_UNAVAILABLE",
            code_pb2.UNAVAILABLE,
            503,
            "no replica of the service could take the call",
        ),
        *token_refusals(),
    ]
    return {refusal.reason: refusal for refusal in table}


# Which local replies are which refusal, in the order they are tried.
_RECOGNISED: Sequence[tuple[str, Sequence[Json]]] = (
    ("RATE_LIMITED", [code_details("local_rate_limited"), response_flags("RL")]),
    ("TOKEN_MISSING", [code_details(f"{REFUSED_TOKEN}{{Jwt_is_missing}}")]),
    ("TOKEN_EXPIRED", [code_details(f"{REFUSED_TOKEN}{{Jwt_is_expired}}")]),
    # A bad signature, an unknown key, another issuer or audience, `alg: none`, a malformed token.
    ("TOKEN_INVALID", [code_details_prefix(REFUSED_TOKEN)]),
    ("OVERLOADED", [code_details("reached_concurrency_limit"), response_flags("UO")]),
    ("REQUEST_TOO_LARGE", [http_status(413, INGRESS)]),
    ("UNKNOWN_METHOD", [response_flags("NR")]),
    # Not URX: per-try timeouts that used up the retries are flagged URX as well as UT, and
    # a spent budget is no outage to retry (deadline_replies).
    ("UPSTREAM_UNAVAILABLE", [response_flags("UH", "UF", "UC")]),
    ("MALFORMED_REQUEST", [http_status(400, INGRESS)]),
)


def refusal_replies(topology: Topology) -> list[Json]:
    """Local-reply mappers: each refusal Envoy makes itself answered with its reason, in JSON to
    a JSON caller and with gRPC status and details to a gRPC caller."""
    table = refusals(topology)
    recognised = [(table[reason], any_of(filters)) for reason, filters in _RECOGNISED]
    # A spent deadline keeps Envoy's own message, which says which timeout ended the call.
    deadline = any_of([response_flags("UT", "DT"), http_status(504, INGRESS)])
    return [
        *(json_reply(refusal, match) for refusal, match in recognised),
        {
            "filter": {"and_filter": {"filters": [deadline, JSON_CALLER]}},
            "status_code": 504,
            "body_format_override": {
                "json_format": {"code": code_pb2.DEADLINE_EXCEEDED, "message": "%LOCAL_REPLY_BODY%"}
            },
        },
        *(grpc_reply(refusal, match) for refusal, match in recognised),
        # Envoy's own words for each timeout (as deadline_replies keeps them for the
        # sidecars' gRPC callers), in a reply a gRPC-Web caller reads as well.
        trailers_only(response_flags("UT"), code_pb2.DEADLINE_EXCEEDED, "upstream request timeout"),
        trailers_only(
            response_flags("DT"), code_pb2.DEADLINE_EXCEEDED, "downstream duration timeout"
        ),
    ]


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


ONE_MESSAGE = "one_message"
"""The name of the Lua script that routes of single-message requests turn on."""


def _edge_check_source(topology: Topology, check: str) -> Json:
    table = refusals(topology)
    replies = ",\n".join(
        f"  {reason} = {{status = {_lua_string(str(r.http_status))}, "
        f"grpc_status = {_lua_string(str(r.grpc_code))}, "
        f"message = {_lua_string(r.grpc_message())}, "
        f"details = {_lua_string(r.details_bin())}, "
        f"json = {_lua_string(json.dumps(r.json_body()))}}}"
        for reason, r in table.items()
        if reason in ("MALFORMED_MESSAGE", "UNSUPPORTED_MEDIA_TYPE", "REQUEST_TOO_LARGE")
    )
    script = (files("shopmesh.envoy") / "edge_check.lua").read_text()
    limit = topology.gateway.limits.max_request_bytes
    return {
        "inline_string": f"CHECK = {_lua_string(check)}\nMAX_REQUEST_BYTES = {limit}\n"
        f"REPLIES = {{\n{replies}\n}}\n{script}"
    }


def edge_check_filter(topology: Topology) -> Json:
    """The Lua filter of edge_check.lua: the content type of every request, and the one-message
    check where a route turns it on (per_route_filters)."""
    return {
        "name": LUA,
        "typed_config": typed(
            "envoy.extensions.filters.http.lua.v3.Lua",
            default_source_code=_edge_check_source(topology, "content_type"),
            source_codes={ONE_MESSAGE: _edge_check_source(topology, ONE_MESSAGE)},
        ),
    }


def _bucket(limit: LocalRateLimit) -> Json:
    return {
        "max_tokens": limit.max_tokens,
        "tokens_per_fill": limit.tokens_per_fill,
        "fill_interval": duration(limit.fill_interval),
    }


def _rate_limit(name: str, stat_prefix: str, **buckets: object) -> Json:
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": name,
        "typed_config": typed(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix=stat_prefix,
            filter_enabled={**always, "runtime_key": RATE_LIMIT_ENABLED},
            filter_enforced={**always, "runtime_key": f"{INGRESS}.rate_limit.enforced"},
            rate_limited_as_resource_exhausted=True,
            **buckets,
        ),
    }


def rate_limit_filters(topology: Topology, stat_prefix: str) -> list[Json]:
    """A call takes a token from its source address's own bucket, then one from the bucket all
    callers share. In that order, so that a client refused for going too fast (at 500 calls/s)
    takes nothing from the others. The same runtime keys switch both off, for a benchmark of the
    mesh's own capacity."""
    gateway = topology.gateway
    per_client = _rate_limit(
        "envoy.filters.http.local_ratelimit.per_client",
        per_client_stat_prefix(stat_prefix),
        rate_limits=[{"actions": [{"remote_address": {}}]}],
        descriptors=[
            {
                "entries": [{"key": "remote_address"}],
                "token_bucket": _bucket(gateway.per_client_rate_limit),
            }
        ],
        max_dynamic_descriptors=MAX_CLIENT_BUCKETS,
        always_consume_default_token_bucket=False,
    )
    shared = _rate_limit(
        "envoy.filters.http.local_ratelimit",
        stat_prefix,
        token_bucket=_bucket(gateway.local_rate_limit),
    )
    return [per_client, shared]


def adaptive_concurrency_filter(topology: Topology) -> Json:
    """One controller for the methods of `gateway.adaptive_concurrency` (routes of other methods
    turn it off: per_route_filters). It samples their latency, and lowers the concurrency it
    admits while the latency grows beyond the minimum it measured; what is beyond the limit is
    refused at once (OVERLOADED)."""
    adaptive = topology.gateway.adaptive_concurrency
    return {
        "name": ADAPTIVE_CONCURRENCY,
        "typed_config": typed(
            "envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
            gradient_controller_config={
                # The median: a fault in a minority of calls (retried, slower) does not move it;
                # a queue in front of the upstream, which slows every call, does.
                "sample_aggregate_percentile": {"value": 50},
                "concurrency_limit_params": {
                    "max_concurrency_limit": adaptive.max_concurrency,
                    "concurrency_update_interval": CONCURRENCY_UPDATE_INTERVAL,
                },
                "min_rtt_calc_params": {
                    "interval": duration(adaptive.min_rtt_interval),
                    "request_count": 20,
                    "jitter": {"value": 10},
                    "min_concurrency": adaptive.min_concurrency,
                    # Admitted calls may take up to twice the minimum before the limit drops.
                    "buffer": {"value": 100},
                },
            },
            concurrency_limit_exceeded_status={"code": 503},
            enabled={"default_value": True, "runtime_key": ADAPTIVE_CONCURRENCY_ENABLED},
        ),
    }


def admitted_paths(topology: Topology) -> set[str]:
    """gRPC paths under the adaptive concurrency controller."""
    admitted = topology.gateway.adaptive_concurrency.methods
    return {
        f"/{topology.services[service].grpc_service}/{method}"
        for service, methods in admitted.items()
        for method in methods
    }


def size_limit_filter(topology: Topology) -> Json:
    """Buffers a request's body up to `limits.max_request_bytes` and refuses it beyond
    (REQUEST_TOO_LARGE), before it travels to a sidecar and an app. Off unless a route turns it
    on (per_route_filters): not on streams, whose body never ends, nor on a request no route
    takes, which is answered at once."""
    return {
        "name": BUFFER,
        "disabled": True,
        "typed_config": typed(
            "envoy.extensions.filters.http.buffer.v3.Buffer",
            max_request_bytes=topology.gateway.limits.max_request_bytes,
        ),
    }


def _is_stream(route: Json) -> bool:
    return route["route"]["timeout"] in ("0s", duration(timedelta(0)))


def per_route_filters(
    routes: list[Json], topology: Topology, one_message_paths: set[str]
) -> list[Json]:
    """What each route turns on and off: the one-message check on routes of single-message
    requests (`one_message_paths`), the size limit on those of them that are not streams, and
    the adaptive concurrency controller off but for the admitted methods."""
    admitted = admitted_paths(topology)
    for route in routes:
        path = route["match"]["path"]
        filters: Json = {}
        if path in one_message_paths:
            filters[LUA] = typed(
                "envoy.extensions.filters.http.lua.v3.LuaPerRoute", name=ONE_MESSAGE
            )
            if not _is_stream(route):
                limit = topology.gateway.limits.max_request_bytes
                filters[BUFFER] = typed(
                    "envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                    buffer={"max_request_bytes": limit},
                )
        if path not in admitted:
            filters[ADAPTIVE_CONCURRENCY] = typed(
                "envoy.config.route.v3.FilterConfig", disabled=True
            )
        if filters:
            route["typed_per_filter_config"] = filters
    return routes


NO_CALLER = {"address_prefix": "255.255.255.255", "prefix_len": 32}
"""The limited broadcast address: a range no connection comes from."""


def edge_manager_options(topology: Topology) -> Mapping[str, object]:
    """Envoy's edge best practices on the gateway's HTTP connection manager."""
    limits = topology.gateway.limits
    return {
        # The caller's own address, not one it claims in x-forwarded-for: the per-client rate
        # limit keys on it.
        "use_remote_address": True,
        # No caller of the edge is internal, whatever its address (loopback here, a node's on
        # a cluster): Envoy keeps the x-forwarded-for and x-envoy-* headers an internal caller
        # sends, and users throttles sign-ins by the x-envoy-external-address set here. One
        # range that no caller can come from, not an empty list: proto3 cannot tell an empty
        # list from an unset one, and unset may mean Envoy's default (RFC 1918, 127.0.0.1).
        "internal_address_config": {"unix_sockets": False, "cidr_ranges": [NO_CALLER]},
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "request_headers_timeout": duration(limits.request_headers_timeout),
        # Dropped, not refused: over HTTP/2 a refusal is a bare stream reset.
        "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
    }
