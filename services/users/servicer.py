"""gRPC handlers of shop.users.v1.UsersService: proto in, domain call, proto out.

Errors are not handled here: DomainErrors raised by the domain become status codes with rich
details in the shared ErrorMappingInterceptor.
"""

from __future__ import annotations

from typing import Any

from grpc import aio

from services.common.convert import to_timestamp
from services.users.domain import User, Users
from shop.users.v1 import users_pb2, users_pb2_grpc


def user_to_proto(user: User) -> users_pb2.User:
    """The wire form of a domain User."""
    return users_pb2.User(
        user_id=user.user_id,
        email=user.email,
        display_name=user.display_name,
        create_time=to_timestamp(user.create_time),
    )


class UsersServicer(users_pb2_grpc.UsersServiceServicer):
    """UsersService backed by the users domain."""

    def __init__(self, users: Users) -> None:
        self._users = users

    async def CreateUser(
        self, request: users_pb2.CreateUserRequest, context: aio.ServicerContext[Any, Any]
    ) -> users_pb2.CreateUserResponse:
        """See users.proto."""
        user = await self._users.create(request.request_id, request.email, request.display_name)
        return users_pb2.CreateUserResponse(user=user_to_proto(user))

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: aio.ServicerContext[Any, Any]
    ) -> users_pb2.GetUserResponse:
        """See users.proto."""
        user = await self._users.get(request.user_id)
        return users_pb2.GetUserResponse(user=user_to_proto(user))
