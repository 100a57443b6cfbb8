"""Envoy's own replies (local replies) that say why: a refusal is a gRPC status with a
google.rpc.ErrorInfo reason (and a RetryInfo when waiting helps) for a gRPC caller, and the same
google.rpc.Status in JSON, under an HTTP status, for a JSON caller, the way the transcoder
renders the apps' own errors. Each mapper pairs a refusal with the local-reply filter that
recognises it."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import ERROR_DOMAIN
from shopmesh.envoy.builders import Json, typed

GRPC_MESSAGE_SAFE = " !#$&'()*+,/:;=?@[]~"
"""What grpc-message carries as it is; the rest is percent-encoded, as gRPC requires."""


@dataclass(frozen=True)
class Refusal:
    """One reason an Envoy answers a call itself, as every client sees it."""

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
        """The message as a `grpc-message` trailer: percent-encoded, as gRPC requires."""
        return quote(self.message, safe=GRPC_MESSAGE_SAFE)

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


def response_flags(*flags: str) -> Json:
    return {"response_flag_filter": {"flags": list(flags)}}


def http_status(status: int, stat_prefix: str) -> Json:
    return {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {
                    "default_value": status,
                    "runtime_key": f"{stat_prefix}.local_reply.{status}",
                },
            }
        }
    }


def _cel(expression: str) -> Json:
    """A local-reply filter of one CEL expression over the reply."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": typed(
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                expression=expression,
            ),
        }
    }


def code_details(details: str) -> Json:
    """Matches Envoy's response code details, for a reply that sets no response flag."""
    return _cel(f"response.code_details == '{details}'")


def code_details_prefix(prefix: str) -> Json:
    """Matches Envoy's response code details that start with `prefix`."""
    return _cel(f"response.code_details.startsWith('{prefix}')")


def any_of(filters: Sequence[Json]) -> Json:
    return filters[0] if len(filters) == 1 else {"or_filter": {"filters": list(filters)}}


# A JSON caller: its content type is not gRPC, or the transcoder already turned it into gRPC
# (and marked it so).
JSON_CALLER = {
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


def trailers_only(match: Json, code: int, message: str, details_bin: str | None = None) -> Json:
    """The mapper of the local replies `match` finds to a gRPC or gRPC-Web caller: a
    trailers-only reply of grpc-status `code`, grpc-message `message` and, when given,
    grpc-status-details-bin.

    Built for the gRPC-Web caller as much: Envoy decides whether a local reply is gRPC by the
    request's content type before the grpc_web filter has made the call gRPC, so its replies
    to gRPC-Web are plain HTTP. Hence a 200 (a gRPC-Web client reads an HTTP error status
    instead of grpc-status) and no body, the message in grpc-message: a reply with a body the
    grpc_web filter would take for a non-gRPC answer and replace its grpc-status by UNKNOWN."""
    # A header value here is a format string: its percent signs are doubled.
    encoded = quote(message, safe=GRPC_MESSAGE_SAFE).replace("%", "%%")
    headers = [_header("grpc-status", str(code)), _header("grpc-message", encoded)]
    if details_bin is not None:
        headers.append(_header("grpc-status-details-bin", details_bin))
    return {
        "filter": match,
        "status_code": 200,
        "headers_to_add": headers,
        "body_format_override": {"text_format_source": {"inline_string": ""}},
    }


def grpc_reply(refusal: Refusal, match: Json) -> Json:
    """The mapper of `refusal` to a gRPC or gRPC-Web caller (grpc-status-details-bin repeats
    code and message, as clients check)."""
    return trailers_only(match, refusal.grpc_code, refusal.message, refusal.details_bin())


def json_reply(refusal: Refusal, match: Json) -> Json:
    """The mapper of `refusal` to a JSON caller (JSON_CALLER is added to `match`)."""
    retry = (
        [_header("retry-after", str(max(1, round(refusal.retry_after.total_seconds()))))]
        if refusal.retry_after is not None
        else []
    )
    return {
        "filter": {"and_filter": {"filters": [match, JSON_CALLER]}},
        "status_code": refusal.http_status,
        "headers_to_add": retry,
        "body_format_override": {"json_format": refusal.json_body()},
    }
