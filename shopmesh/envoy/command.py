"""The Envoy command line, the same for every Envoy shopmesh starts (locally, in tests and
on Kubernetes)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

ACCESS_LOG_FLUSH = timedelta(milliseconds=100)
"""Access logs reach their files within 100 ms (Envoy's default: 10 s), so `shopmesh logs`
and tests see a call's line right after the call."""


def envoy_args(
    config: Path,
    *,
    concurrency: int = 1,
    log_level: str = "info",
    flush: timedelta = ACCESS_LOG_FLUSH,
) -> list[str]:
    """Arguments for `envoy` running `config`. One worker thread by default: a dozen Envoys
    share a laptop (or 2 CI cores). Hot restart is off: every Envoy runs alone in its process
    (or container) and is replaced by stopping and starting it, so several Envoys on one host
    need no distinct base ids."""
    return [
        "-c",
        str(config),
        "--concurrency",
        str(concurrency),
        "--disable-hot-restart",
        "--file-flush-interval-msec",
        str(flush // timedelta(milliseconds=1)),
        "--log-level",
        log_level,
    ]


def envoy_command(
    binary: Path, config: Path, *, concurrency: int = 1, log_level: str = "info"
) -> list[str]:
    """The whole command line: `binary` and `envoy_args`."""
    return [str(binary), *envoy_args(config, concurrency=concurrency, log_level=log_level)]


def validate_command(binary: Path, config: Path) -> list[str]:
    """`envoy --mode validate`: load and check `config` without serving it."""
    return [*envoy_command(binary, config, log_level="warning"), "--mode", "validate"]
