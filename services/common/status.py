"""gRPC status <-> domain error mapping with google.rpc rich details (grpcio-status).

Servers: `to_grpc_status` builds the status the ErrorMappingInterceptor aborts with.
Clients: `error_info`, `field_violations`, `precondition_violations` and `retry_delay` read
the details back out of a failed call.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import (
    ERROR_DOMAIN,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionViolation,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

_CODES: Mapping[type[DomainError], int] = {
    InvalidArgument: code_pb2.INVALID_ARGUMENT,
    NotFound: code_pb2.NOT_FOUND,
    AlreadyExists: code_pb2.ALREADY_EXISTS,
    FailedPrecondition: code_pb2.FAILED_PRECONDITION,
    ResourceExhausted: code_pb2.RESOURCE_EXHAUSTED,
    Unavailable: code_pb2.UNAVAILABLE,
    Unauthenticated: code_pb2.UNAUTHENTICATED,
    PermissionDenied: code_pb2.PERMISSION_DENIED,
}


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_grpc_status(error: DomainError) -> grpc.Status:
    """The status for `error`: its code, message, an ErrorInfo, and BadRequest violations."""
    code = next((c for cls, c in _CODES.items() if isinstance(error, cls)), code_pb2.UNKNOWN)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
            )
        )
    ]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, FailedPrecondition) and error.violations:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type, subject=v.subject, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, ResourceExhausted) and error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=error.retry_after_seconds))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return _status(status_pb2.Status(code=code, message=error.message, details=details))


def _status(status: status_pb2.Status) -> grpc.Status:
    result: grpc.Status = rpc_status.to_status(status)
    return result


def internal_status() -> grpc.Status:
    """The status for a bug: INTERNAL without leaking the exception text to callers."""
    return _status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message="internal error; see the service log",
            details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN))],
        )
    )


def _details(error: grpc.aio.AioRpcError) -> list[any_pb2.Any]:
    # AioRpcError carries code, details and trailing metadata, all from_call reads.
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return [] if status is None else list(status.details)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if the server sent one."""
    for detail in _details(error):
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def field_violations(error: grpc.aio.AioRpcError) -> list[FieldViolation]:
    """The BadRequest field violations of a failed call (empty if none were sent)."""
    for detail in _details(error):
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            return [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
    return []


def retry_delay(error: grpc.aio.AioRpcError) -> timedelta | None:
    """The RetryInfo delay of a failed call: how long the server asks to wait (None if unsent)."""
    for detail in _details(error):
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            delay: timedelta = retry.retry_delay.ToTimedelta()
            return delay
    return None


def precondition_violations(error: grpc.aio.AioRpcError) -> list[PreconditionViolation]:
    """The PreconditionFailure violations of a failed call (empty if none were sent)."""
    for detail in _details(error):
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            return [
                PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations
            ]
    return []
