"""Logs under the state directory stay bounded: the mesh's log keeper caps each log at the
size `up` was given, keeps the part before in `<log>.1`, and every process goes on writing
whole lines into the emptied file."""

from __future__ import annotations

import json

from shopmesh.local.mesh import LOGS
from tests.support.calls import get_product, timed
from tests.support.clients import channel
from tests.support.mesh import running_mesh
from tests.support.polling import eventually

MAX_BYTES = 20_000
"""Small, so a few hundred calls fill a gateway access log (a line is ~500 bytes)."""


async def test_access_logs_are_capped_and_go_on_with_whole_lines() -> None:
    async with running_mesh(log_max_bytes=MAX_BYTES) as mesh:
        assert mesh.logs is not None
        assert mesh.logs.alive()
        log = mesh.gateway.access_log
        previous = log.with_name(log.name + ".1")
        async with channel(mesh.gateway_address) as target:

            async def capped() -> bool:
                for _ in range(20):
                    await timed(get_product(target))
                return previous.exists()

            # Bounded: at most ~600 calls before the keeper's deadline.
            await eventually(capped, within=30, what=f"{log.name} to be capped", interval=0)
            for _ in range(20):
                await timed(get_product(target))

        assert previous.stat().st_size > MAX_BYTES

        async def written_again() -> bool:
            return bool(log.read_text().strip())

        await eventually(written_again, within=5, what=f"new lines in {log.name}")
        text = log.read_text()
        assert "\0" not in text
        entries = [json.loads(line) for line in text.splitlines()]
        assert all(entry["listener"] == "ingress" for entry in entries)

        # With the traffic over, the keeper's next round brings the log under the cap again.
        async def under_the_cap() -> bool:
            return log.stat().st_size <= MAX_BYTES

        await eventually(under_the_cap, within=10, what=f"{log.name} under {MAX_BYTES} bytes")
        assert "capped gateway.access.log" in mesh.paths.log(LOGS).read_text()
