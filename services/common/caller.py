"""Who a call is made for: the signed-in shopper, as the mesh passes it on.

The edge gateway verifies the shopper's access token (Envoy's jwt_authn) and sets CALLER_HEADER
to the token's subject, a user id, after removing any such header a caller sent from outside.
Inbound sidecars accept the header only from the identities allowed to set it (the gateway,
and orders, which calls on the shopper's behalf and passes it on). The apps read it here, once,
and hand the domain a plain user id.

Servicers read the caller with `caller_of` (methods any service may call without one) or
`require_caller` (methods that answer only for the caller's own data); the domain then checks a
request's `user_id` against it with `own_user_id`. grpc is imported for the type checker only,
so domain modules may use `own_user_id` and the error reasons.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.common.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from grpc import aio

CALLER_HEADER = "x-shop-user"
"""Request metadata naming the signed-in user a call is made for (the access token's `sub`)."""

SIGN_IN_REQUIRED = "SIGN_IN_REQUIRED"
"""ErrorInfo reason: the method answers only for a signed-in caller, and the call named none."""
NOT_YOUR_DATA = "NOT_YOUR_DATA"
"""ErrorInfo reason: the request names another user's data (a `user_id` not the caller's)."""


def caller_of(context: aio.ServicerContext[Any, Any]) -> str | None:
    """The user id the call is made for, or None if it names nobody (a service's own call).

    Two different values name nobody in particular, so they count as none: the gateway and
    orders each set exactly one.
    """
    values = {
        value
        for key, value in context.invocation_metadata() or ()
        if key == CALLER_HEADER and isinstance(value, str)
    }
    if len(values) != 1:
        return None
    (caller,) = values
    return caller or None


def require_caller(context: aio.ServicerContext[Any, Any]) -> str:
    """The user id the call is made for; Unauthenticated SIGN_IN_REQUIRED if it names none."""
    caller = caller_of(context)
    if caller is None:
        raise Unauthenticated(
            "this method answers only for a signed-in caller: sign in and send the access token",
            reason=SIGN_IN_REQUIRED,
        )
    return caller


def own_user_id(user_id: str, caller: str) -> str:
    """The user a request's `user_id` field names: the caller when it is empty, the caller's own
    id as given; PermissionDenied NOT_YOUR_DATA when it names someone else.

    PERMISSION_DENIED, not NOT_FOUND: the caller named the user, so the refusal tells them
    nothing they did not know, and an empty answer would look like "that user has no data"."""
    if not user_id:
        return caller
    if user_id != caller:
        raise PermissionDenied(
            "user_id names another user; a caller may only ask for their own data",
            reason=NOT_YOUR_DATA,
            metadata={"field": "user_id"},
        )
    return user_id


def on_behalf_of(user_id: str) -> tuple[tuple[str, str], ...]:
    """Request metadata for a call made for `user_id` (orders passing its shopper on)."""
    return ((CALLER_HEADER, user_id),)
