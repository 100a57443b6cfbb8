"""Who used the machine during one run of a running mesh: the CPU time of this process (the load
generator), of the mesh's processes and of every other process, and how long every runnable task
waited for the disk at once (Linux pressure stall information, /proc/pressure/io "full"). On two
shared cores either of the last two moves the mesh's latency more than the gateway does."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from shopmesh.local.mesh import RunningMesh

TICKS = os.sysconf("SC_CLK_TCK")
OTHERS_LIMIT = 0.10
"""Above this share of the machine's CPUs busy with other processes, a run is disturbed."""
STALL_LIMIT = 0.10
"""Above this share of a run's time with every task waiting for the disk, it is disturbed."""


def _machine_busy() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    # user nice system idle iowait irq softirq steal: everything but idle and iowait.
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICKS


def process_cpu(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    # After the parenthesized command name: state is field 3, utime and stime 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@contextlib.contextmanager
def cpu_used(pids: Mapping[str, int]) -> Iterator[dict[str, float]]:
    """The CPU seconds each named process used during the block, filled in when it ends."""
    before = {name: process_cpu(pid) for name, pid in pids.items()}
    used: dict[str, float] = {}
    yield used
    used.update({name: process_cpu(pid) - before[name] for name, pid in pids.items()})


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _io_stalled() -> float | None:
    """Seconds every non-idle task was stalled on I/O since boot; None without PSI."""
    try:
        text = Path("/proc/pressure/io").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("full "):
            return int(line.rsplit("total=", 1)[1]) / 1e6
    return None


@dataclass(frozen=True)
class Sample:
    machine: float
    generator: float
    mesh: float
    io_stalled: float | None

    @classmethod
    def now(cls, mesh: RunningMesh) -> Sample:
        pids = [p.pid for p in mesh.processes() if p.pid is not None]
        mesh_cpu = sum(process_cpu(pid) for pid in pids)
        return cls(_machine_busy(), _self_cpu(), mesh_cpu, _io_stalled())


@dataclass(frozen=True)
class MachineLoad:
    """Shares of one CPU (1.0 = one core busy) over `seconds`, and the disk stall."""

    seconds: float
    generator: float
    mesh: float
    others: float
    io_stalled: float | None
    """Seconds during which every runnable task waited for the disk."""

    @classmethod
    def between(cls, before: Sample, after: Sample, seconds: float) -> MachineLoad:
        generator = after.generator - before.generator
        mesh = after.mesh - before.mesh
        others = (after.machine - before.machine) - generator - mesh
        stalled = (
            None
            if before.io_stalled is None or after.io_stalled is None
            else after.io_stalled - before.io_stalled
        )
        return cls(
            seconds, generator / seconds, mesh / seconds, max(0.0, others) / seconds, stalled
        )

    def describe(self) -> str:
        stall = (
            "" if self.io_stalled is None else f"; disk stalled every task {self.io_stalled:.2f} s"
        )
        return (
            f"CPU cores busy: generator {self.generator:.2f}, mesh {self.mesh:.2f}, "
            f"other processes {self.others:.2f} of {len(os.sched_getaffinity(0))}{stall}"
        )

    def disturbed(self) -> str:
        """Why other work on the machine skews this run's figures ("" when it does not)."""
        found = []
        cores = len(os.sched_getaffinity(0))
        if self.others > OTHERS_LIMIT * cores:
            found.append(f"other processes kept {self.others:.2f} of {cores} cores busy")
        if self.io_stalled is not None and self.io_stalled > STALL_LIMIT * self.seconds:
            found.append(f"the disk stalled every task {self.io_stalled:.2f} s")
        return "; ".join(found)
