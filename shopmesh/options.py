"""Command-line options that several `shopmesh` commands share, each defined once."""

from __future__ import annotations

from pathlib import Path

import click

from services.common.config import LOG_LEVEL, LOG_LEVELS

DEFAULT_STATE_DIR = Path("var")
DEFAULT_TOPOLOGY = Path("envoy/mesh.yaml")

state_dir = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_STATE_DIR,
    help="Sockets, pids, logs, certificates, data and rendered configs.",
)
topology = click.option(
    "--topology",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_TOPOLOGY,
    help="The topology file.",
)
log_level = click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    envvar=LOG_LEVEL,
    show_envvar=True,
    help="Log level of every app.",
)
