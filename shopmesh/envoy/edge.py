"""What the gateway does to a call from outside before it may cost an upstream anything: the one
route matcher of a public method, a check of the content type and of gRPC framing (a Lua
filter), two rate limits (shared, and per source address), adaptive concurrency for the costly
methods, and the reply to every refusal: a gRPC status (or, to a JSON caller, an HTTP status and
a JSON google.rpc.Status) carrying a google.rpc.ErrorInfo reason, and a RetryInfo when waiting
helps.

An error the caller caused must never reach an app as a 5xx: the gateway's outlier detection
would count it against a healthy replica."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib.resources import files
from urllib.parse import quote

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import ERROR_DOMAIN
from shopmesh.envoy.builders import Json, duration, typed
from shopmesh.topology import LocalRateLimit, Topology

ADAPTIVE_CONCURRENCY = "envoy.filters.http.adaptive_concurrency"
MAX_CLIENT_BUCKETS = 4096
"""Source addresses with a bucket of their own at once (least recently used are dropped)."""
CONCURRENCY_UPDATE_INTERVAL = "0.25s"
"""How often the adaptive controller re-computes its limit from the latencies it sampled."""


def grpc_call_match(path: str) -> Json:
    """The route match of a public method, whatever protocol the call came in: gRPC, or JSON,
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


@dataclass(frozen=True)
class Refusal:
    """One reason the gateway answers a call itself, as every client sees it."""

    reason: str
    """The ErrorInfo reason (domain ERROR_DOMAIN) a client can branch on."""
    grpc_code: int
    http_status: int
    """What a JSON caller gets instead of the gRPC code."""
    message: str
    retry_after: timedelta | None = None

    def _details(self) -> list[any_pb2.Any]:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN))
        details = [info]
        if self.retry_after is not None:
            retry = any_pb2.Any()
            delay = duration_pb2.Duration()
            delay.FromTimedelta(self.retry_after)
            retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            details.append(retry)
        return details

    def details_bin(self) -> str:
        """The `grpc-status-details-bin` trailer: the whole google.rpc.Status, base64."""
        status = status_pb2.Status(
            code=self.grpc_code, message=self.message, details=self._details()
        )
        return base64.b64encode(status.SerializeToString()).decode()

    def grpc_message(self) -> str:
        """The `grpc-message` trailer, percent-encoded as gRPC requires."""
        return quote(self.message, safe=" !#$&'()*+,/:;=?@[]~")

    def json_body(self) -> Json:
        """The JSON google.rpc.Status the transcoder renders the apps' own errors as."""
        details: list[Json] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": self.reason,
                "domain": ERROR_DOMAIN,
            }
        ]
        if self.retry_after is not None:
            seconds = self.retry_after.total_seconds()
            details.append(
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds}s"}
            )
        return {"code": self.grpc_code, "message": self.message, "details": details}


RESOURCE_EXHAUSTED = 8


def refusals(topology: Topology) -> dict[str, Refusal]:
    """Every refusal of the gateway by reason."""
    retry_after = topology.gateway.local_rate_limit.fill_interval
    table = [
        Refusal(
            "MALFORMED_MESSAGE",
            3,
            400,
            "a unary call must carry exactly one complete length-prefixed gRPC message",
        ),
        Refusal(
            "UNSUPPORTED_MEDIA_TYPE",
            3,
            415,
            "send gRPC (content-type: application/grpc) or JSON (content-type: application/json)",
        ),
        Refusal("MALFORMED_REQUEST", 3, 400, "the gateway could not read this request"),
        Refusal(
            "REQUEST_TOO_LARGE",
            RESOURCE_EXHAUSTED,
            413,
            f"a request body may have at most {topology.gateway.limits.max_request_bytes} bytes",
        ),
        Refusal(
            "RATE_LIMITED",
            RESOURCE_EXHAUSTED,
            429,
            "too many calls: the gateway's rate limit refused this one",
            retry_after,
        ),
        Refusal(
            "OVERLOADED",
            RESOURCE_EXHAUSTED,
            503,
            "the service is at its capacity: this call was refused rather than queued",
            retry_after,
        ),
        Refusal(
            "UNKNOWN_METHOD",
            12,
            404,
            "the gateway serves no such method (grpcurl ... list shows those it serves)",
        ),
        Refusal("UPSTREAM_UNAVAILABLE", 14, 503, "no replica of the service could take the call"),
        Refusal("DEADLINE_EXCEEDED", 4, 504, "the call's deadline passed before it completed"),
    ]
    return {refusal.reason: refusal for refusal in table}


def _response_flags(*flags: str) -> Json:
    return {"response_flag_filter": {"flags": list(flags)}}


def _http_status(status: int) -> Json:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": status, "runtime_key": f"ingress.local_reply.{status}"},
            }
        }
    }


def _code_details(details: str) -> Json:
    """Matches Envoy's response code details, for a reply that sets no response flag."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": typed(
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                expression=f"response.code_details == '{details}'",
            ),
        }
    }


def _any(filters: Sequence[Json]) -> Json:
    return filters[0] if len(filters) == 1 else {"or_filter": {"filters": list(filters)}}


# Which local replies are which refusal, in the order they are tried.
_RECOGNISED: Sequence[tuple[str, Sequence[Json]]] = (
    ("RATE_LIMITED", [_code_details("local_rate_limited"), _response_flags("RL")]),
    ("OVERLOADED", [_code_details("reached_concurrency_limit"), _response_flags("UO")]),
    ("REQUEST_TOO_LARGE", [_http_status(413)]),
    ("UNKNOWN_METHOD", [_response_flags("NR")]),
    ("UPSTREAM_UNAVAILABLE", [_response_flags("UH", "UF", "URX", "UC")]),
    ("DEADLINE_EXCEEDED", [_response_flags("UT", "DT")]),
    ("MALFORMED_REQUEST", [_http_status(400)]),
)

# A JSON caller: its content type is not gRPC, or the transcoder already turned it into gRPC
# (and marked it so).
_JSON_CALLER = {
    "or_filter": {
        "filters": [
            {
                "header_filter": {
                    "header": {"name": "x-envoy-original-method", "present_match": True}
                }
            },
            {
                "header_filter": {
                    "header": {
                        "name": "content-type",
                        "string_match": {"prefix": "application/grpc"},
                        "invert_match": True,
                    }
                }
            },
        ]
    }
}


def _header(key: str, value: str) -> Json:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def refusal_replies(topology: Topology) -> list[Json]:
    """Local-reply mappers: each refusal Envoy makes itself answered with its reason, in JSON to
    a JSON caller and with gRPC status and details to a gRPC caller."""
    table = refusals(topology)
    json_mappers: list[Json] = []
    grpc_mappers: list[Json] = []
    for reason, filters in _RECOGNISED:
        refusal = table[reason]
        retry = (
            [_header("retry-after", str(max(1, round(refusal.retry_after.total_seconds()))))]
            if refusal.retry_after is not None
            else []
        )
        json_mappers.append(
            {
                "filter": {"and_filter": {"filters": [_any(filters), _JSON_CALLER]}},
                "status_code": refusal.http_status,
                "headers_to_add": retry,
                "body_format_override": {"json_format": refusal.json_body()},
            }
        )
        grpc_mappers.append(
            {
                "filter": _any(filters),
                "headers_to_add": [
                    _header("grpc-status", str(refusal.grpc_code)),
                    _header("grpc-status-details-bin", refusal.details_bin()),
                ],
                # Envoy makes a gRPC reply's grpc-message of its body.
                "body_format_override": {"text_format": refusal.message},
            }
        )
    return [*json_mappers, *grpc_mappers]


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal


def edge_check_filter(topology: Topology, one_message_paths: Sequence[str]) -> Json:
    """The Lua filter of edge_check.lua, with its tables rendered from the topology."""
    table = refusals(topology)
    replies = ",\n".join(
        f"  {reason} = {{status = {_lua_string(str(r.http_status))}, "
        f"grpc_status = {_lua_string(str(r.grpc_code))}, "
        f"message = {_lua_string(r.grpc_message())}, "
        f"details = {_lua_string(r.details_bin())}, "
        f"json = {_lua_string(json.dumps(r.json_body()))}}}"
        for reason, r in table.items()
        if reason in ("MALFORMED_MESSAGE", "UNSUPPORTED_MEDIA_TYPE")
    )
    paths = ",\n".join(f"  [{_lua_string(path)}] = true" for path in one_message_paths)
    script = (files("shopmesh.envoy") / "edge_check.lua").read_text()
    source = f"ONE_MESSAGE = {{\n{paths}\n}}\nREPLIES = {{\n{replies}\n}}\n{script}"
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": typed(
            "envoy.extensions.filters.http.lua.v3.Lua",
            default_source_code={"inline_string": source},
        ),
    }


def _bucket(limit: LocalRateLimit) -> Json:
    return {
        "max_tokens": limit.max_tokens,
        "tokens_per_fill": limit.tokens_per_fill,
        "fill_interval": duration(limit.fill_interval),
    }


def rate_limit_filter(topology: Topology, stat_prefix: str) -> Json:
    """Every call takes a token from the bucket all callers share and one from its source
    address's own bucket (a client at 500 calls/s cannot starve the others). The runtime keys
    switch both off, for a benchmark of the mesh's own capacity."""
    gateway = topology.gateway
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": typed(
            "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            stat_prefix=stat_prefix,
            token_bucket=_bucket(gateway.local_rate_limit),
            rate_limits=[{"actions": [{"remote_address": {}}]}],
            descriptors=[
                {
                    "entries": [{"key": "remote_address"}],
                    "token_bucket": _bucket(gateway.per_client_rate_limit),
                }
            ],
            max_dynamic_descriptors=MAX_CLIENT_BUCKETS,
            filter_enabled={**always, "runtime_key": f"{stat_prefix}.rate_limit.enabled"},
            filter_enforced={**always, "runtime_key": f"{stat_prefix}.rate_limit.enforced"},
            rate_limited_as_resource_exhausted=True,
        ),
    }


def adaptive_concurrency_filter(topology: Topology) -> Json:
    """One controller for the methods of `gateway.adaptive_concurrency` (routes of other methods
    turn it off: admission_off). It samples their latency, and lowers the concurrency it
    admits while the latency grows beyond the minimum it measured; what is beyond the limit is
    refused at once (OVERLOADED)."""
    adaptive = topology.gateway.adaptive_concurrency
    return {
        "name": ADAPTIVE_CONCURRENCY,
        "typed_config": typed(
            "envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
            gradient_controller_config={
                "sample_aggregate_percentile": {"value": 90},
                "concurrency_limit_params": {
                    "max_concurrency_limit": adaptive.max_concurrency,
                    "concurrency_update_interval": CONCURRENCY_UPDATE_INTERVAL,
                },
                "min_rtt_calc_params": {
                    "interval": duration(adaptive.min_rtt_interval),
                    "request_count": 20,
                    "jitter": {"value": 10},
                    "min_concurrency": adaptive.min_concurrency,
                    "buffer": {"value": 25},
                },
            },
            concurrency_limit_exceeded_status={"code": 503},
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


def admission_off() -> Json:
    """typed_per_filter_config of a route outside the adaptive concurrency controller."""
    return {
        ADAPTIVE_CONCURRENCY: typed("envoy.config.route.v3.FilterConfig", disabled=True),
    }


def edge_manager_options(topology: Topology) -> Mapping[str, object]:
    """Envoy's edge best practices on the gateway's HTTP connection manager."""
    limits = topology.gateway.limits
    return {
        # The caller's own address, not one it claims in x-forwarded-for: the per-client rate
        # limit keys on it.
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "request_headers_timeout": duration(limits.request_headers_timeout),
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
    }
