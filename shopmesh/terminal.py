"""What every `shopmesh` command shares: where output goes, how a coroutine runs, how to name a
command so it can be pasted, and the running mesh a command works on."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh

T = TypeVar("T")

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)
WIDE_OUTPUT = 200


def wide() -> Console:
    """The console for wide tables: into a pipe or a file they are printed whole rather than
    squeezed into 80 columns."""
    return console if console.is_terminal else Console(width=WIDE_OUTPUT, highlight=False)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def tool(name: str) -> str:
    """How to type the command `name` installed beside this Python so that it runs from the
    current directory (`.venv/bin/shopmesh`), whatever PATH holds."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    relative = os.path.relpath(path)
    return shlex.quote(relative if not relative.startswith("..") else str(path))


def attached(state_dir: Path) -> RunningMesh:
    """The mesh running in `state_dir`; a one-line error saying how to start one if none."""
    mesh = RunningMesh.attach(state_dir)
    if mesh is None:
        raise MeshError(f"no mesh is running in {state_dir} (start one with `shopmesh up`)")
    return mesh
