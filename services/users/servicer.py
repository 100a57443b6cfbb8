"""gRPC handlers of shop.users.v1.UsersService: proto in, domain call, proto out.

Errors are not handled here: DomainErrors raised by the domain become status codes with rich
details in the shared ErrorMappingInterceptor.

SignIn's and CreateUser's source address is read here and passed on as a plain value: the
`x-envoy-external-address` request metadata (CLIENT_ADDRESS_METADATA) if present, else the
caller's peer address when it is TCP. Envoy sets that header at the edge (with
`use_remote_address`) to the address the connection came from; in the mesh every call reaches
users from its own sidecar over a Unix socket, whose peer says nothing about the shopper.
Trusting the header is safe only once the inbound sidecar accepts it from the gateway alone.

GetUser answers only a signed-in caller, about their own account, and a call naming no caller
is refused (UNAUTHENTICATED SIGN_IN_REQUIRED) even from a service: the one service that reads
accounts, orders, always calls for a shopper, so refusing the rest keeps emails unreadable if
a route ever let an anonymous call through.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from services.common.caller import require_caller
from services.common.convert import to_timestamp
from services.users.domain import User, Users
from services.users.sessions import Sessions
from services.users.throttle import address_key
from services.users.tokens import Session
from shop.users.v1 import users_pb2, users_pb2_grpc

CLIENT_ADDRESS_METADATA = "x-envoy-external-address"


def user_to_proto(user: User) -> users_pb2.User:
    """The wire form of a domain User."""
    return users_pb2.User(
        user_id=user.user_id,
        email=user.email,
        display_name=user.display_name,
        create_time=to_timestamp(user.create_time),
    )


def session_to_proto(session: Session) -> users_pb2.Session:
    """The wire form of a Session."""
    return users_pb2.Session(
        access_token=session.access_token,
        access_token_expire_time=to_timestamp(session.access_token_expire_time),
        refresh_token=session.refresh_token,
        refresh_token_expire_time=to_timestamp(session.refresh_token_expire_time),
        user_id=session.user_id,
    )


def source_address(context: aio.ServicerContext[Any, Any]) -> str | None:
    """The throttled form of the caller's address (see module docstring), or None."""
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_ADDRESS_METADATA and isinstance(value, str):
            return address_key(value)
    # grpc peers: "ipv4:127.0.0.1:5050", "ipv6:[::1]:5050", "unix:/path".
    kind, _, rest = context.peer().partition(":")
    if kind in ("ipv4", "ipv6"):
        return address_key(rest.rsplit(":", 1)[0])
    return None


class UsersServicer(users_pb2_grpc.UsersServiceServicer):
    """UsersService backed by the users domain."""

    def __init__(self, users: Users, sessions: Sessions) -> None:
        self._users = users
        self._sessions = sessions

    async def CreateUser(
        self, request: users_pb2.CreateUserRequest, context: aio.ServicerContext[Any, Any]
    ) -> users_pb2.CreateUserResponse:
        """See users.proto."""
        user = await self._users.create(
            request.request_id,
            request.email,
            request.display_name,
            request.password,
            source_address(context),
        )
        return users_pb2.CreateUserResponse(user=user_to_proto(user))

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: aio.ServicerContext[Any, Any]
    ) -> users_pb2.GetUserResponse:
        """See users.proto."""
        user = await self._users.get(require_caller(context), request.user_id)
        return users_pb2.GetUserResponse(user=user_to_proto(user))

    async def SignIn(
        self, request: users_pb2.SignInRequest, context: aio.ServicerContext[Any, Any]
    ) -> users_pb2.SignInResponse:
        """See users.proto."""
        session = await self._sessions.sign_in(
            request.email, request.password, source_address(context)
        )
        return users_pb2.SignInResponse(session=session_to_proto(session))

    async def RenewToken(
        self, request: users_pb2.RenewTokenRequest, context: aio.ServicerContext[Any, Any]
    ) -> users_pb2.RenewTokenResponse:
        """See users.proto."""
        session = await self._sessions.renew(request.refresh_token)
        return users_pb2.RenewTokenResponse(session=session_to_proto(session))

    async def GetJwks(
        self, request: users_pb2.GetJwksRequest, context: aio.ServicerContext[Any, Any]
    ) -> users_pb2.GetJwksResponse:
        """See users.proto."""
        return users_pb2.GetJwksResponse(jwks_json=self._sessions.jwks_json())
