"""Service configuration, read once from the environment into a frozen dataclass.

Every address a service listens on or calls comes from here, so the mesh can point services at
sidecar Unix sockets without touching their code. Bad values stop the service at start with a
message that names the variable and says what is expected.

This module is the reader of the app environment; `shopmesh.appenv` is its one writer (for
the local mesh, `shopmesh run` and Kubernetes alike), and tests/unit/test_config.py checks that
what one writes is what the other reads. The variables:

- SHOPMESH_LISTEN: `unix:/path.sock` or `host:port` (required)
- SHOPMESH_DB_PATH: this service's SQLite file (default var/data/<service>.db); files the
  service keeps beside its data (users' signing keys, payments' fingerprint key) live in its
  directory whichever the backend
- SHOPMESH_DATABASE_URL: `postgresql://...`: this service's own Postgres database instead of
  the SQLite file (services.common.postgres). Unset, the service uses SQLite. The URL carries no
  password: name a 0600 passfile in it (`?passfile=/path`), never the secret itself
- SHOPMESH_UPSTREAM_<NAME>: address of upstream NAME (required for each upstream the service
  calls; NAME is the service name upper-cased with `-` as `_`: gift-cards -> GIFT_CARDS)
- SHOPMESH_GRACE_SECONDS: how long in-flight calls may finish on SIGTERM (default 5)
- SHOPMESH_DRAIN_SECONDS: on SIGTERM, how long to keep serving while reporting NOT_SERVING, so
  callers' health checks move traffic away before the server stops accepting calls (default 0;
  the mesh sets it from the health-check policy). SIGINT skips it.
- SHOPMESH_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR (default INFO)
- SHOPMESH_REPLICA: this replica's name among its service's replicas, the same after a restart
  (the local mesh's pod name, orders-0; on Kubernetes the pod's name, kept across container
  restarts). Work a replica leases in the
  database (orders' sagas) is its own again at once when it restarts. Unset: a name unique to
  the process, so a restarted replica's leases are taken over only once they lapse.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ENV_PREFIX = "SHOPMESH_"
LISTEN = ENV_PREFIX + "LISTEN"
DB_PATH = ENV_PREFIX + "DB_PATH"
DATABASE_URL = ENV_PREFIX + "DATABASE_URL"
GRACE_SECONDS = ENV_PREFIX + "GRACE_SECONDS"
DRAIN_SECONDS = ENV_PREFIX + "DRAIN_SECONDS"
LOG_LEVEL = ENV_PREFIX + "LOG_LEVEL"
REPLICA = ENV_PREFIX + "REPLICA"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

_TCP_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")


def upstream_variable(service: str) -> str:
    """The variable holding the address of upstream `service` (SHOPMESH_UPSTREAM_GIFT_CARDS)."""
    return f"{ENV_PREFIX}UPSTREAM_{service.upper().replace('-', '_')}"


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message says how to fix it."""


@dataclass(frozen=True)
class ServiceConfig:
    """Everything a service process needs to know about where it runs."""

    service: str
    listen: str
    db_path: Path
    upstreams: Mapping[str, str] = field(default_factory=dict)
    grace_seconds: float = 5.0
    drain_seconds: float = 0.0
    log_level: str = "INFO"
    database_url: str | None = None
    """The service's Postgres database; None: the SQLite file at `db_path`."""
    replica: str | None = None
    """This replica's stable name (SHOPMESH_REPLICA), or None."""

    @property
    def database(self) -> Path | str:
        """Where the store lives, as Database.open takes it: the Postgres URL, or the file."""
        return self.database_url if self.database_url is not None else self.db_path

    def upstream(self, name: str) -> str:
        """The address of upstream `name`; raises ConfigError if it was not configured."""
        try:
            return self.upstreams[name]
        except KeyError:
            raise ConfigError(
                f"{self.service} has no address for upstream {name!r}: "
                f"set {upstream_variable(name)}"
            ) from None


def validate_address(value: str, variable: str) -> str:
    """Return `value` if it is a gRPC address shopmesh accepts: `unix:<path>` or `host:port`."""
    if value.startswith("unix:"):
        if not value.removeprefix("unix:").lstrip("/"):
            raise ConfigError(
                f"{variable}={value!r}: a unix address needs a path, unix:/run/x.sock"
            )
        return value
    match = _TCP_ADDRESS.match(value)
    if not match or not 0 <= int(match["port"]) <= 65535:
        raise ConfigError(
            f"{variable}={value!r}: expected unix:/path/to.sock or host:port (e.g. 127.0.0.1:50051)"
        )
    return value


def _required_address(env: Mapping[str, str], variable: str) -> str:
    value = env.get(variable)
    if not value:
        raise ConfigError(
            f"{variable} is not set: start the service with `shopmesh up` (the mesh) or "
            "`shopmesh run` (without it), or set it to unix:/path/to.sock or host:port"
        )
    return validate_address(value, variable)


def _database_url(env: Mapping[str, str]) -> str | None:
    value = env.get(DATABASE_URL)
    if not value:
        return None
    if not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"{DATABASE_URL}={value!r}: expected a postgresql:// URL "
            "(unset it to use the SQLite file at SHOPMESH_DB_PATH)"
        )
    if urlsplit(value).password is not None or "password=" in urlsplit(value).query:
        # Not even echoed back: the message must not spread the secret further.
        raise ConfigError(
            f"{DATABASE_URL} carries a password: keep it in a 0600 passfile and name that "
            "in the URL instead (postgresql:///db?host=/socket/dir&user=role&passfile=/path)"
        )
    return value


def _float(env: Mapping[str, str], variable: str, default: float, minimum: float) -> float:
    raw = env.get(variable)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{variable}={raw!r}: expected a number of seconds") from None
    if value < minimum:
        raise ConfigError(f"{variable}={raw!r}: must be >= {minimum}")
    return value


def env_seconds(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    """Read SHOPMESH_<name> as seconds (for service-specific settings such as poll intervals)."""
    return _float(env, ENV_PREFIX + name, default, minimum)


def load_config(
    service: str,
    upstream_names: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> ServiceConfig:
    """Read `service`'s configuration from `env` (default: os.environ).

    `upstream_names` lists the services this one calls; each needs an address.
    """
    env = os.environ if env is None else env
    listen = _required_address(env, LISTEN)

    db_path = Path(env.get(DB_PATH) or f"var/data/{service}.db")
    if db_path.exists() and db_path.is_dir():
        raise ConfigError(f"{DB_PATH}={str(db_path)!r} is a directory; give a file path")

    upstreams = {name: _required_address(env, upstream_variable(name)) for name in upstream_names}

    log_level = (env.get(LOG_LEVEL) or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"{LOG_LEVEL}={log_level!r}: expected one of {', '.join(LOG_LEVELS)}")

    return ServiceConfig(
        service=service,
        listen=listen,
        db_path=db_path,
        upstreams=upstreams,
        grace_seconds=_float(env, GRACE_SECONDS, 5.0, 0.0),
        drain_seconds=_float(env, DRAIN_SECONDS, 0.0, 0.0),
        log_level=log_level,
        database_url=_database_url(env),
        replica=env.get(REPLICA) or None,
    )
