"""The log keeper: a small process of the local mesh that keeps every log under the state
directory below a size. A log past `--max-bytes` is copied to `<log>.1` (replacing the copy
before) and truncated in place ("copytruncate"): every writer, app or Envoy, appends (O_APPEND),
so it goes on writing at the new end, and no process needs to reopen anything. A line written
between the copy and the truncation is lost; with the default size that is a few lines per
10 MiB. It exits when mesh.json is gone: the mesh was stopped, or its start failed.

Run by `shopmesh up` as `python -m shopmesh.local.logcap STATE_DIR`."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import click

from shopmesh.layout import StateDir

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_INTERVAL = 2.0


def cap(log: Path, max_bytes: int) -> bool:
    """Copy `log` to `<log>.1` and empty it if it is larger than `max_bytes`; returns whether
    it did."""
    try:
        if log.stat().st_size <= max_bytes:
            return False
        shutil.copyfile(log, log.with_name(log.name + ".1"))
        os.truncate(log, 0)
    except FileNotFoundError:
        return False
    return True


def cap_all(state: StateDir, max_bytes: int) -> list[Path]:
    """One round of the keeper: cap every log of the mesh in `state`; returns the logs capped.
    A log it cannot handle now (a full disk) is reported and tried again next round: that is
    never the end of the keeper."""
    capped = []
    for log in sorted(state.logs.glob("*.log")):
        try:
            if cap(log, max_bytes):
                capped.append(log)
        except OSError as error:
            click.echo(f"could not cap {log.name}: {error}", err=True)
    return capped


@click.command()
@click.argument("state_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--max-bytes", type=click.IntRange(1024), default=DEFAULT_MAX_BYTES, show_default=True
)
@click.option(
    "--interval", type=click.FloatRange(0.05), default=DEFAULT_INTERVAL, show_default=True
)
def main(state_dir: Path, max_bytes: int, interval: float) -> None:
    """Keep the logs in STATE_DIR/log below --max-bytes while the mesh runs."""
    state = StateDir(state_dir)
    while state.state_file.exists():
        for log in cap_all(state, max_bytes):
            click.echo(f"capped {log.name} (previous part in {log.name}.1)")
        time.sleep(interval)


if __name__ == "__main__":
    main()
