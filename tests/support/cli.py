"""The `shopmesh` command (and the project's scripts) as a user runs it: a separate process,
from the project's root."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.paths import ROOT, SHOPMESH

COMMAND_TIMEOUT = 90.0
"""Bounds one command; `up` on a loaded 2-core machine takes a few seconds."""


def shopmesh_command() -> list[str]:
    """The installed `shopmesh` entry point (make generate installs it beside this Python),
    else the same CLI through `python -m`."""
    return [str(SHOPMESH)] if SHOPMESH.is_file() else [sys.executable, "-m", "shopmesh.cli"]


def shopmesh(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run `shopmesh ARGS` to completion; its exit status and output."""
    return subprocess.run(
        [*shopmesh_command(), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=None if env is None else dict(env),
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


async def shopmesh_ok(*args: str) -> str:
    """Run `shopmesh ARGS` from a coroutine; its output, which must end with exit 0."""
    return await command_ok([*shopmesh_command(), *args])


async def command_ok(
    command: Sequence[str],
    env: Mapping[str, str] | None = None,
    within: float = COMMAND_TIMEOUT,
) -> str:
    """Run `command` from a coroutine, from the project's root; its output (stdout and
    stderr together), which must end with exit 0 within `within` seconds."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=None if env is None else dict(env),
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{command} did not finish in {within}s") from None
    text = output.decode()
    assert process.returncode == 0, f"{command} exited {process.returncode}:\n{text}"
    return text
