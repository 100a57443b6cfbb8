"""Domain errors: what business code raises when a request cannot be served.

This module never imports grpc, so domain modules can use it. One interceptor
(`services.common.status`) turns these into gRPC status codes with google.rpc rich details, so
no handler maps errors by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# ErrorInfo.domain for every error shopmesh raises.
ERROR_DOMAIN = "shop.example"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: `field` is a path such as `items[0].quantity`."""

    field: str
    description: str


@dataclass
class DomainError(Exception):
    """Base of every business error. `reason` is an UPPER_SNAKE_CASE ErrorInfo reason."""

    message: str
    reason: str = "UNKNOWN"
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)


@dataclass
class InvalidArgument(DomainError):
    """The request itself is malformed (gRPC INVALID_ARGUMENT, with BadRequest details)."""

    reason: str = "INVALID_ARGUMENT"
    violations: list[FieldViolation] = field(default_factory=list)


@dataclass
class NotFound(DomainError):
    """The named entity does not exist (gRPC NOT_FOUND)."""

    reason: str = "NOT_FOUND"


@dataclass
class AlreadyExists(DomainError):
    """The entity exists already, or an idempotency key was reused for a different request
    (gRPC ALREADY_EXISTS)."""

    reason: str = "ALREADY_EXISTS"


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition, e.g. type "STOCK", subject "sku:MUG-01"."""

    type: str
    subject: str
    description: str


@dataclass
class FailedPrecondition(DomainError):
    """The system is not in a state that allows this (gRPC FAILED_PRECONDITION): stock short,
    card declined, order no longer cancellable. `violations` become PreconditionFailure details."""

    reason: str = "FAILED_PRECONDITION"
    violations: list[PreconditionViolation] = field(default_factory=list)


@dataclass
class ResourceExhausted(DomainError):
    """A per-caller limit was hit, e.g. a watcher too slow for its buffer (RESOURCE_EXHAUSTED).
    `retry_after_seconds`, when set, becomes a RetryInfo detail: how long to wait first."""

    reason: str = "RESOURCE_EXHAUSTED"
    retry_after_seconds: float | None = None


@dataclass
class Unauthenticated(DomainError):
    """The caller's credentials (password, token) are missing or not valid (UNAUTHENTICATED)."""

    reason: str = "UNAUTHENTICATED"


@dataclass
class PermissionDenied(DomainError):
    """The caller is known but may not do this, e.g. list another user's orders
    (PERMISSION_DENIED)."""

    reason: str = "PERMISSION_DENIED"


@dataclass
class Unavailable(DomainError):
    """A dependency could not be reached; the caller may retry (gRPC UNAVAILABLE)."""

    reason: str = "UNAVAILABLE"


class Validator:
    """Collects field violations so one response lists every problem, not just the first.

    >>> v = Validator()
    >>> v.require(bool(email), "email", "must not be empty")
    >>> v.raise_if_invalid("invalid CreateUser request")
    """

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def require(self, condition: bool, field_path: str, description: str) -> bool:
        """Record a violation when `condition` is false; returns `condition`."""
        if not condition:
            self.violations.append(FieldViolation(field_path, description))
        return condition

    def raise_if_invalid(self, message: str) -> None:
        """Raise InvalidArgument listing every recorded violation, if there is any."""
        if self.violations:
            raise InvalidArgument(message, violations=list(self.violations))
