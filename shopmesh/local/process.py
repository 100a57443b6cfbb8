"""One process of the local mesh: started detached with its output appended to its log, or
found again by pid and start time; signalled, waited for and stopped."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from services.common.files import write_atomically
from shopmesh.local.errors import MeshError
from shopmesh.local.private import PRIVATE_DIRECTORY, PRIVATE_FILE, PRIVATE_UMASK, open_private
from shopmesh.local.state import ProcessRecord

POLL_INTERVAL = 0.02
LOG_TAIL_LINES = 25
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if it is gone or a zombie;
    -1 if /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return -1
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file (empty if there is none)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64 * 1024))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A process of the mesh: a child of this process (after `spawn`), or found again by the
    pid and start time of its record (after `attach`)."""

    def __init__(
        self, record: ProcessRecord, log: Path, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.record = record
        self.log = log
        self._popen = popen

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def pid(self) -> int | None:
        return self.record.pid

    def alive(self) -> bool:
        """Whether the process still runs (a child that exited is reaped here)."""
        if self._popen is not None:
            return self._popen.poll() is None
        if self.record.pid is None:
            return False
        ticks = start_ticks(self.record.pid)
        if ticks == -1 or not Path("/proc").is_dir():
            return _pid_exists(self.record.pid)
        recorded = self.record.start_ticks
        return ticks is not None and (recorded is None or ticks == recorded)

    @property
    def returncode(self) -> int | None:
        """The exit status of a child that has exited (None otherwise, or if not our child)."""
        return None if self._popen is None else self._popen.poll()

    def send(self, signum: int) -> None:
        """Send `signum` if the process still runs."""
        if self.record.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.record.pid, signum)

    async def wait(self, within: float) -> bool:
        """Wait up to `within` seconds for the process to exit; returns whether it did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.alive():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(POLL_INTERVAL)
        return True

    async def terminate(self, within: float, signum: int = signal.SIGTERM) -> None:
        """`signum` (SIGTERM), then SIGKILL if it has not exited `within` seconds."""
        self.send(signum)
        if not await self.wait(within):
            self.send(signal.SIGKILL)
            await self.wait(within)

    def describe_exit(self) -> str:
        code = self.returncode
        if code is None:
            return "exited"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"


def spawn(
    record: ProcessRecord, log: Path, pidfile: Path, inherited: Mapping[str, str]
) -> ManagedProcess:
    """Start `record`'s command detached (its own session: a Ctrl-C in the terminal that ran
    `up` does not reach it) with `inherited` plus the record's environment, its output appended
    to `log`; write its pidfile and put the pid in the record. The process and what it
    creates are private to the user (shopmesh.local.private), and so are its log and pidfile."""
    log.parent.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    with os.fdopen(open_private(log), "ab") as output:
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        output.write(f"--- shopmesh: starting {record.name} at {stamp}\n".encode())
        output.flush()
        try:
            popen = subprocess.Popen(
                record.command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**inherited, **record.env},
                cwd=PROJECT_ROOT,
                start_new_session=True,
                close_fds=True,
                umask=PRIVATE_UMASK,
            )
        except OSError as error:
            raise MeshError(
                f"{record.name}: cannot start {record.command[0]}: {error.strerror}"
            ) from None
    record.pid = popen.pid
    record.start_ticks = start_ticks(popen.pid)
    pidfile.parent.mkdir(mode=PRIVATE_DIRECTORY, parents=True, exist_ok=True)
    write_atomically(pidfile, f"{popen.pid}\n".encode(), PRIVATE_FILE)
    return ManagedProcess(record, log, popen)
