"""Unary GetUser, direct vs through the sidecars, and what the sidecars logged of it."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from scripts.bench.h2load import ROUNDS, BenchError, H2Load, LoadResult, grpc_frame
from scripts.bench.settings import CALL_TIMEOUT, CALLEE, CALLER, GET_USER, H2LOAD_AUTHORITY
from services.common.caller import on_behalf_of
from shop.users.v1 import users_pb2
from shopmesh.envoy.sidecar import EGRESS, INBOUND
from shopmesh.local.mesh import RunningMesh

# --- unary: direct vs through the sidecars --------------------------------------------------


@dataclass(frozen=True)
class Maximum:
    """The maximum throughput of one path over several rounds."""

    rounds: list[LoadResult]

    @property
    def rate(self) -> float:
        """The median of the rounds' OK calls per second."""
        return statistics.median(r.ok_rate for r in self.rounds)

    def spread(self) -> str:
        rates = [r.ok_rate for r in self.rounds]
        return f"{min(rates):.0f}-{max(rates):.0f}"

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rounds)


@dataclass(frozen=True)
class Unary:
    """The maximum throughput of both paths, unpinned."""

    direct_max: Maximum
    mesh_max: Maximum

    @property
    def ratio(self) -> float:
        return self.mesh_max.rate / self.direct_max.rate


def _raw(message: bytes) -> bytes:
    return message


async def get_user_raw(address: str, request: bytes, caller: str) -> bytes:
    """One GetUser call made for `caller` with a grpc client, returning the serialized
    response."""
    async with aio.insecure_channel(address) as channel:
        method = channel.unary_unary(GET_USER, request_serializer=_raw, response_deserializer=_raw)
        response: bytes = await method(request, timeout=CALL_TIMEOUT, metadata=on_behalf_of(caller))
        return response


async def prepare_h2load(mesh: RunningMesh, user_id: str, work: Path) -> H2Load:
    """An H2Load sending the GetUser request of `user_id`, once both paths answered it alike."""
    request = users_pb2.GetUserRequest(user_id=user_id).SerializeToString()
    direct = mesh.pod(CALLEE).app_socket
    through = mesh.pod(CALLER).egress_socket
    # Both paths must answer the very bytes h2load sends with the same, right user.
    responses = {
        path: await get_user_raw(f"unix:{path}", request, user_id) for path in (direct, through)
    }
    if len(set(responses.values())) != 1:
        raise BenchError("GetUser answers differ between the direct and the mesh path")
    response = responses[direct]
    if users_pb2.GetUserResponse.FromString(response).user.user_id != user_id:
        raise BenchError(f"GetUser did not return user {user_id}")
    body = work / "get_user.bin"
    body.write_bytes(grpc_frame(request))
    return H2Load(body, len(grpc_frame(response)), work, user_id)


async def bench_unary(mesh: RunningMesh, h2load: H2Load, seconds: float) -> Unary:
    """Alternating flat-out rounds of both paths, so that drifting background load on the
    machine hits both alike."""
    direct = mesh.pod(CALLEE).app_socket
    through = mesh.pod(CALLER).egress_socket
    warm = {path: await h2load.warm_up(path) for path in (direct, through)}
    rounds: dict[Path, list[LoadResult]] = {direct: [], through: []}
    for _ in range(ROUNDS):
        for path, results in rounds.items():
            results.append(await h2load.flat_out(path, warm[path], seconds))
    return Unary(Maximum(rounds[direct]), Maximum(rounds[through]))


def grpc_statuses(access_log: Path, listener: str) -> Counter[str]:
    """h2load's GetUser calls an Envoy access log records for `listener`, by grpc-status (with
    Envoy's response flags when it answered itself, e.g. `14 UO` for a circuit-breaker
    overflow). h2load's calls are those with its authority."""
    counts: Counter[str] = Counter()
    for line in access_log.read_text().splitlines():
        entry = json.loads(line)
        if (entry["listener"], entry["path"], entry["authority"]) == (
            listener,
            GET_USER,
            H2LOAD_AUTHORITY,
        ):
            flags = entry["flags"]
            counts[f"{entry['grpc_status']}" + ("" if flags == "-" else f" {flags}")] += 1
    return counts


@dataclass(frozen=True)
class MeshLogs:
    """What the sidecars logged of h2load's GetUser calls through the mesh, by grpc-status."""

    caller: Counter[str]
    """orders' egress listener."""
    callee: Counter[str]
    """users' inbound listener."""


async def mesh_logs(mesh: RunningMesh, calls: int, failed: int) -> MeshLogs:
    """Read both sidecars' access logs once they hold all `calls` (the supervisor has Envoy
    flush them every 100 ms); the callee sees every call the caller did not fail itself."""
    deadline = time.monotonic() + 5
    while True:
        logs = MeshLogs(
            grpc_statuses(mesh.pod(CALLER).access_log, EGRESS),
            grpc_statuses(mesh.pod(CALLEE).access_log, INBOUND),
        )
        complete = logs.caller.total() >= calls and logs.callee.total() >= calls - failed
        if complete or time.monotonic() > deadline:
            return logs
        await asyncio.sleep(0.1)
