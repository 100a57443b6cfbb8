"""Service configuration, read once from the environment into a frozen dataclass.

Every address a service listens on or calls comes from here, so the mesh can point services at
sidecar Unix sockets without touching their code. Bad values stop the service at start with a
message that names the variable and says what is expected.

- SHOPMESH_LISTEN: `unix:/path.sock` or `host:port` (default 127.0.0.1:<service port>)
- SHOPMESH_DB_PATH: this service's SQLite file (default var/data/<service>.db)
- SHOPMESH_UPSTREAM_<NAME>: address of upstream NAME (default 127.0.0.1:<NAME's port>)
- SHOPMESH_GRACE_SECONDS: how long in-flight calls may finish on SIGTERM (default 5)
- SHOPMESH_DRAIN_SECONDS: on SIGTERM, how long to keep serving while reporting NOT_SERVING, so
  callers' health checks move traffic away before the server stops accepting calls (default 0;
  the mesh sets it from the health-check policy). SIGINT skips it.
- SHOPMESH_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR (default INFO)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "SHOPMESH_"

# Default TCP ports when a service is run on its own, outside the mesh.
DEFAULT_PORTS: Mapping[str, int] = {
    "users": 50051,
    "inventory": 50052,
    "payments": 50053,
    "orders": 50054,
    "notifications": 50055,
}

_TCP_ADDRESS = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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

    def upstream(self, name: str) -> str:
        """The address of upstream `name`; raises ConfigError if it was not configured."""
        try:
            return self.upstreams[name]
        except KeyError:
            raise ConfigError(
                f"{self.service} has no address for upstream {name!r}: "
                f"set {ENV_PREFIX}UPSTREAM_{name.upper()}"
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

    `upstream_names` lists the services this one calls; each gets an address.
    """
    env = os.environ if env is None else env
    if service not in DEFAULT_PORTS:
        raise ConfigError(f"unknown service {service!r}; expected one of {sorted(DEFAULT_PORTS)}")

    listen_var = ENV_PREFIX + "LISTEN"
    listen = validate_address(
        env.get(listen_var) or f"127.0.0.1:{DEFAULT_PORTS[service]}", listen_var
    )

    db_var = ENV_PREFIX + "DB_PATH"
    db_path = Path(env.get(db_var) or f"var/data/{service}.db")
    if db_path.exists() and db_path.is_dir():
        raise ConfigError(f"{db_var}={str(db_path)!r} is a directory; give a file path")

    upstreams: dict[str, str] = {}
    for name in upstream_names:
        if name not in DEFAULT_PORTS:
            raise ConfigError(f"unknown upstream {name!r}")
        variable = f"{ENV_PREFIX}UPSTREAM_{name.upper()}"
        upstreams[name] = validate_address(
            env.get(variable) or f"127.0.0.1:{DEFAULT_PORTS[name]}", variable
        )

    level_var = ENV_PREFIX + "LOG_LEVEL"
    log_level = (env.get(level_var) or "INFO").upper()
    if log_level not in _LOG_LEVELS:
        raise ConfigError(f"{level_var}={log_level!r}: expected one of {', '.join(_LOG_LEVELS)}")

    return ServiceConfig(
        service=service,
        listen=listen,
        db_path=db_path,
        upstreams=upstreams,
        grace_seconds=_float(env, ENV_PREFIX + "GRACE_SECONDS", 5.0, 0.0),
        drain_seconds=_float(env, ENV_PREFIX + "DRAIN_SECONDS", 0.0, 0.0),
        log_level=log_level,
    )
