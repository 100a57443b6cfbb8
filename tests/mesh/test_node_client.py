"""The Node client (clients/node, TypeScript on the code buf generates and Connect for Node)
against the real mesh, run as a user runs it: one process per scenario, on the venv's Node. A
checkout it reports CONFIRMED is confirmed in the mesh, and the notification it prints is the
one the mesh stored; an invalid email ends the run with the decoded BadRequest field violation
and ErrorInfo reason (grpc-status-details-bin, read with the generated google.rpc schemas)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from dataclasses import dataclass

import pytest

from shop.orders.v1 import orders_pb2
from shopmesh.envoy.signin import bearer_metadata
from shopmesh.local.mesh import RunningMesh
from tests.support.clients import PASSWORD, MeshClients
from tests.support.paths import NODE, NODE_CLIENT, ROOT
from tests.support.polling import CALL_TIMEOUT

pytestmark = pytest.mark.asyncio(loop_scope="module")

# Seconds one run may take: start-up, two Argon2id hashes, a checkout and the outbox's relay.
RUN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def explain(self) -> str:
        return (
            f"the node client exited {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


async def run_client(mesh: RunningMesh, *args: str) -> Run:
    """`node clients/node/shop.ts GATEWAY ARGS` to its end (killed after RUN_TIMEOUT)."""
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(NODE_CLIENT),
        mesh.gateway_address,
        *args,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


def email() -> str:
    return f"node-{uuid.uuid4().hex[:12]}@example.com"


async def test_a_checkout_ends_confirmed_and_its_notification_arrives(
    mesh: RunningMesh, mesh_clients: MeshClients
) -> None:
    shopper = email()
    run = await run_client(mesh, "--email", shopper, "--password", PASSWORD, "--wait", "20")
    assert run.returncode == 0, run.explain()
    assert f"signed up {shopper} as usr_" in run.stdout, run.explain()
    assert re.search(r"^  STICKER-01  .+  USD \d+\.\d\d  stock \d+$", run.stdout, re.M), (
        run.explain()
    )
    placed = re.search(r"^order (\S+) CONFIRMED, total USD \d+\.\d\d$", run.stdout, re.M)
    assert placed, run.explain()
    order_id = placed[1]
    printed = re.search(rf"^notification (ntf_[0-9a-f]{{32}}) for {order_id}: ", run.stdout, re.M)
    assert printed, run.explain()

    # What the client printed is what the mesh holds, read back as the same shopper.
    session = await mesh_clients.sign_in(shopper)
    response = await mesh_clients.orders.GetOrder(
        orders_pb2.GetOrderRequest(order_id=order_id),
        timeout=CALL_TIMEOUT,
        metadata=bearer_metadata(session.access_token),
    )
    assert response.order.status == orders_pb2.ORDER_STATUS_CONFIRMED
    assert response.order.user_id == session.user_id


async def test_an_invalid_email_shows_the_field_violation(mesh: RunningMesh) -> None:
    run = await run_client(mesh, "--email", "not-an-email")
    assert run.returncode == 1, run.explain()
    assert run.stderr.splitlines()[:3] == [
        "CreateUser failed: INVALID_ARGUMENT: invalid CreateUser request",
        "  reason INVALID_ARGUMENT (shop.example)",
        "  field email: must be an email address such as ada@example.com",
    ], run.explain()
    assert "signed up" not in run.stdout, run.explain()
