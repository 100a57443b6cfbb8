"""`shopmesh load` against the real mesh through its gateway: a short run makes every call of
the shopper mix, the shop answers them as a shop should (browsing OK, cards paying or declined
as their tokens say, nothing UNKNOWN or INTERNAL), and the command prints its summary and
exits 0."""

from __future__ import annotations

import pytest

from shopmesh.local.mesh import RunningMesh
from shopmesh.observe.load import LoadRun, LoadSettings
from shopmesh.observe.shoppers import GET_PRODUCT, LIST_PRODUCTS, MIX
from tests.support.cli import shopmesh_ok

pytestmark = pytest.mark.asyncio(loop_scope="module")

PAID = {"tok_visa", "tok_mastercard"}
DECLINED = {"tok_chargeDeclined", "tok_insufficientFunds"}
SHORTAGE = "REJECTED:INSUFFICIENT_STOCK"
"""POSTER-LTD (a stock of 1) sells once; later orders of it are short, whatever the card."""
SEED = 83
"""A seed whose 60 calls hold every RPC of the mix and both kinds of card at least twice, at
latencies from a fraction to several times this mesh's (checked with the unit tests' fake), so
that each still appears when a few calls are skipped or fall back to another RPC."""


async def test_a_short_run_makes_every_call_of_the_mix(mesh: RunningMesh) -> None:
    run = LoadRun(mesh.gateway_target, LoadSettings(rate=20, duration=3.0, seed=SEED))

    summary = await run.run()

    # On a loaded machine a few calls may find 16 in flight and be skipped: counted, not sent.
    assert (summary.sent + summary.skipped, summary.stop_reason) == (60, "duration")
    assert summary.skipped <= 6, summary
    rpcs = {rpc.method: rpc for rpc in summary.rpcs}
    assert {method: rpc.count for method, rpc in rpcs.items() if rpc.count == 0} == {}
    assert set(rpcs) == {method for method, _ in MIX}
    broken = {m: rpc.codes for m, rpc in rpcs.items() if {"UNKNOWN", "INTERNAL"} & set(rpc.codes)}
    assert broken == {}
    for method in (LIST_PRODUCTS, GET_PRODUCT):
        assert rpcs[method].codes == {"OK": rpcs[method].count}, method
        assert rpcs[method].p50_ms is not None


async def test_orders_end_as_their_payment_tokens_say(mesh: RunningMesh) -> None:
    run = LoadRun(mesh.gateway_target, LoadSettings(rate=20, duration=3.0, seed=SEED))

    checkouts = (await run.run()).checkouts

    assert PAID & set(checkouts)
    assert DECLINED & set(checkouts)
    for token, outcomes in checkouts.items():
        paid = "CONFIRMED" if token in PAID else "REJECTED:CARD_DECLINED"
        assert set(outcomes) <= {paid, SHORTAGE}, (token, outcomes)
        assert outcomes.get(paid, 0) > 0, (token, outcomes)


async def test_the_command_prints_its_summary_and_exits_0(mesh: RunningMesh) -> None:
    output = await shopmesh_ok(
        "load", "--state-dir", str(mesh.state_dir), "--rate", "20", "--duration", "2"
    )

    assert "load summary" in output
    for method, _ in MIX:
        assert method in output
    assert "40 calls in" in output
    assert "ended by duration" in output
