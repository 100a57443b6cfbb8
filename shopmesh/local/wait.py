"""Waiting for the mesh: poll a condition with a deadline, failing at once, with the end of its
log, when a process it depends on dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from shopmesh.local.errors import MeshError
from shopmesh.local.process import LOG_TAIL_LINES, ManagedProcess, log_tail

POLL_INTERVAL = 0.02


async def until(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    deadline: float,
    watched: Iterable[ManagedProcess] = (),
) -> None:
    """Poll `condition` until it holds. Fails at once, naming the process and showing the end
    of its log, when a watched process exits; fails at `deadline` (time.monotonic()) otherwise."""
    watched = list(watched)
    while True:
        for process in watched:
            if not process.alive():
                tail = log_tail(process.log, lines=200)
                raise MeshError(
                    f"{process.name} {process.describe_exit()} while waiting for {what}"
                    f"{diagnose(tail)}; last lines of {process.log}:\n"
                    + "\n".join(tail.splitlines()[-LOG_TAIL_LINES:])
                )
        if await condition():
            return
        if time.monotonic() > deadline:
            logs = "".join(
                f"\nlast lines of {process.log}:\n{log_tail(process.log)}" for process in watched
            )
            raise MeshError(f"timed out waiting for {what}{logs}")
        await asyncio.sleep(POLL_INTERVAL)


def diagnose(log: str) -> str:
    """A hint for failures whose cause the end of a log hides (Envoy prints a backtrace)."""
    if "inotify" in log:
        return (
            " (Envoy could not watch its certificate directory: the per-user inotify limit is "
            "reached; each Envoy takes 4 instances, so stop other meshes or raise "
            "fs.inotify.max_user_instances with sysctl)"
        )
    if "Address already in use" in log:
        return " (a port chosen for it was taken meanwhile by another program: run up again)"
    return ""
