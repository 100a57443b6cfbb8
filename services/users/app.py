"""Wiring of the users service: its store, domain and servicer, as an App for common.server."""

from __future__ import annotations

from services.common.config import ServiceConfig
from services.common.server import App, Registration
from services.users.domain import Users
from services.users.servicer import UsersServicer
from services.users.store import SqliteUserStore
from shop.users.v1 import users_pb2, users_pb2_grpc

SERVICE_NAME = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name


async def build(config: ServiceConfig) -> App:
    """The users App: UsersService on the SQLite file at `config.db_path`."""
    store = await SqliteUserStore.open(config.db_path)
    return App(
        registrations=[
            Registration(
                SERVICE_NAME,
                UsersServicer(Users(store)),
                users_pb2_grpc.add_UsersServiceServicer_to_server,
            )
        ],
        cleanups=[store.close],
    )
