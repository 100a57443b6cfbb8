"""Fixtures shared by every test: in-process services on temporary Unix sockets (the
machinery is tests/support/services.py), and the databases stores run on: an SQLite file, or a
fresh database in a real Postgres 15 started once per session (shopmesh.local.postgres)."""

from __future__ import annotations

import itertools
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from grpc import aio

# Before any test module imports it, so its asserts report values like a test's own do.
pytest.register_assert_rewrite("tests.support")

from shopmesh.local import postgres  # noqa: E402
from tests.support.databases import BOTH_BACKENDS  # noqa: E402
from tests.support.services import ServiceRunner  # noqa: E402  (after the registration)

_DATABASE_NUMBERS = itertools.count()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, `kill`) ends the run as Ctrl-C does: by default it kills Python at
    once, no fixture's teardown runs, and every mesh and Postgres the tests started outlives it."""
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """A Postgres cluster of its own (sockets only, under a short /tmp directory the postgres
    user can reach), stopped and deleted at the end of the session whatever happened."""
    root = Path(tempfile.mkdtemp(prefix="smpg-", dir="/tmp"))
    try:
        cluster = postgres.init(root)
        # Thrown away at the end: no fsync, so a fresh database per test costs little.
        postgres.start(cluster, durable=False)
        yield cluster
    finally:
        postgres.stop(postgres.Cluster(root))
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_cluster: postgres.Cluster) -> Iterator[str]:
    """The URL of a fresh database with a role of its own (as a service's), dropped after."""
    name = f"test_{next(_DATABASE_NUMBERS)}"
    url = postgres.create_service_database(postgres_cluster, name)
    yield url
    postgres.drop_service_database(postgres_cluster, name)


@pytest.fixture(params=BOTH_BACKENDS)
def db_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a store's database lives, once per backend: a new SQLite file, or a fresh
    Postgres database's URL (`-m "not postgres"` runs the SQLite half alone)."""
    if request.param == "sqlite":
        return tmp_path / "store.db"
    url: str = request.getfixturevalue("postgres_database")
    return url


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short temporary directory for Unix sockets (paths must stay under ~100 bytes, which
    pytest's tmp_path does not guarantee)."""
    path = Path(tempfile.mkdtemp(prefix="sm-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def services_backend(request: pytest.FixtureRequest) -> Callable[[str], str] | None:
    """Where in-process services keep their stores: SQLite files (the default), or, for a
    module parametrized with BOTH_BACKENDS (ON_BOTH_BACKENDS), also a fresh Postgres database
    per service."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
    urls: dict[str, str] = {}

    def database(service: str) -> str:
        if service not in urls:
            name = f"test_{next(_DATABASE_NUMBERS)}_{service.replace('-', '_')}"
            urls[service] = postgres.create_service_database(cluster, name)
            request.addfinalizer(lambda: postgres.drop_service_database(cluster, name))
        return urls[service]

    return database


@pytest.fixture
async def services(
    socket_dir: Path, tmp_path: Path, services_backend: Callable[[str], str] | None
) -> AsyncIterator[ServiceRunner]:
    """Start services with `await services.start("users", build)`; all stop at teardown."""
    runner = ServiceRunner(socket_dir, tmp_path, [], services_backend)
    try:
        yield runner
    finally:
        for service in reversed(runner.running):
            await service.stop(0)


@pytest.fixture
async def channels() -> AsyncIterator[Callable[[str], aio.Channel]]:
    """Open client channels with `channels(address)`; all are closed at teardown."""
    opened: list[aio.Channel] = []

    def open_channel(address: str) -> aio.Channel:
        channel = aio.insecure_channel(address)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()
