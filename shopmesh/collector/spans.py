"""Spans as the collector stores them, and OTLP's ExportTraceServiceRequest turned into them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class SpanRecord:
    """One span: ids in hex, times in Unix nanoseconds, status as OTLP's code (0 unset, 1 ok,
    2 error), attributes as plain JSON values."""

    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]

    def attributes_json(self) -> str:
        return _ATTRIBUTES_JSON.encode(self.attributes)

    def as_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "service": self.service,
            "name": self.name,
            "kind": self.kind,
            "start_unix_nano": self.start_ns,
            "end_unix_nano": self.end_ns,
            "duration_ms": round((self.end_ns - self.start_ns) / 1e6, 3),
            "status": {"code": self.status_code, "message": self.status_message},
            "attributes": self.attributes,
        }


# Built once: json.dumps with options builds a new encoder on every call.
_ATTRIBUTES_JSON = json.JSONEncoder(sort_keys=True, default=str)


def plain(value: common_pb2.AnyValue) -> Any:
    """An OTLP attribute value as a plain Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: plain(item.value) for item in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind is not None else None


def records(request: trace_service_pb2.ExportTraceServiceRequest) -> Iterator[SpanRecord]:
    """Every span of an export request, with the service name of its resource."""
    for resource_spans in request.resource_spans:
        resource = {a.key: plain(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", "unknown"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield SpanRecord(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    service=service,
                    name=span.name,
                    kind=span.kind,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status_code=span.status.code,
                    status_message=span.status.message,
                    attributes={a.key: plain(a.value) for a in span.attributes},
                )
