"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) over the
real mesh, used as a person would: start the load from the page, see every service busy, inject
a payments fault from the page and watch the orders -> payments retries climb while the
gateway's and that edge's success rates stay at or above 99 %, clear it, stop the load, and
open a checkout's trace with every one of its spans. All along the page asks for the state in
one loop, one request at a time, and a span name holding markup is shown as text. The mesh
fixture starts the dashboard as `up` does (on a free port); without it the test fails at
once."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect

from shopmesh.dashboard.state import waterfall
from shopmesh.envoy.faults import ABORT_GRPC_STATUS, ABORT_PERCENT, Fault
from shopmesh.local import faults
from shopmesh.local.dashboard import dashboard_link
from shopmesh.local.mesh import RunningMesh
from shopmesh.topology import GATEWAY
from tests.support.browser import chromium
from tests.support.paths import TOPOLOGY
from tests.support.polling import eventually
from tests.support.spans import HOSTILE_PATH, span
from tests.support.traces import CHECKOUT_SERVICES, TRACE_DEADLINE, reader

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_MS = 30_000
"""Bounds each wait on the page; the page polls the mesh every second."""
LOAD_RATE = 30
ENOUGH_CALLS = 100
"""Calls on orders -> payments in the window before the fault: a success rate over fewer
calls cannot tell 99 % from 98 % (one unlucky call of the 0.3^5 that fail all five tries)."""
MORE_RETRIES = 5
COUNT_STATE_REQUESTS = """{
  // The page's requests for the state: how many are in flight, the most ever at once, and
  // how many have been answered.
  const seen = (window.stateRequests = { inFlight: 0, most: 0, answered: 0 });
  const fetch = window.fetch.bind(window);
  window.fetch = async (resource, options) => {
    const counted = String(resource).startsWith("/api/state");
    if (counted) seen.most = Math.max(seen.most, (seen.inFlight += 1));
    try {
      return await fetch(resource, options);
    } finally {
      if (counted) [seen.inFlight, seen.answered] = [seen.inFlight - 1, seen.answered + 1];
    }
  };
}"""


async def node_rates(page: Page) -> dict[str, float]:
    return dict(
        await page.locator("[data-node]").evaluate_all(
            "(nodes) => nodes.map((n) => [n.dataset.node, Number(n.dataset.rps)])"
        )
    )


async def until_page(page: Page, condition: str, argument: Any = None) -> Any:
    """Wait until the JavaScript `condition` (a function of `argument`) is truthy on the
    page; its value."""
    handle = await page.wait_for_function(condition, arg=argument, timeout=WAIT_MS)
    return await handle.json_value()


EDGE = """(key) => {
  const edge = document.querySelector(`[data-edge="${key}"]`);
  const gateway = document.querySelector('[data-node="gateway"]');
  return {
    calls: Number(edge.dataset.calls),
    retries: Number(edge.dataset.retries),
    success: edge.dataset.successRate === "" ? null : Number(edge.dataset.successRate),
    colour: edge.querySelector("path").getAttribute("class"),
    gateway: gateway.dataset.successRate === "" ? null : Number(gateway.dataset.successRate),
  };
}"""


async def test_the_dashboard_shows_and_steers_the_mesh(mesh: RunningMesh) -> None:
    link = dashboard_link(mesh.state)
    assert link is not None, "the mesh runs no dashboard"
    services = list(TOPOLOGY.services)
    try:
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1440, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "console",
                lambda message: errors.append(message.text) if message.type == "error" else None,
            )
            await page.add_init_script(COUNT_STATE_REQUESTS)
            await page.goto(link.url)
            await expect(page.locator("#updated")).to_have_attribute(
                "data-live", "yes", timeout=WAIT_MS
            )

            # Load from the page, until every service is busy and orders -> payments has
            # carried enough calls in the window for a success rate to mean something.
            await page.fill("#load-rate", str(LOAD_RATE))
            await page.fill("#load-duration", "90")
            await page.click("#load-start")
            await expect(page.locator("#load-state")).to_have_attribute(
                "data-state", "running", timeout=WAIT_MS
            )
            await until_page(
                page,
                """([services, enough]) => services.every((s) =>
                     Number(document.querySelector(`[data-node="${s}"]`).dataset.rps) > 0)
                   && Number(document.querySelector('[data-edge="orders>payments"]')
                        .dataset.calls) >= enough""",
                [services, ENOUGH_CALLS],
            )
            rates = await node_rates(page)
            assert {s: rates[s] > 0 for s in services} == {s: True for s in services}, rates
            before = await until_page(page, EDGE, "orders>payments")

            # A payments fault from the page: the same code as `shopmesh fault`.
            row = page.locator('[data-fault-row="payments"]')
            await row.locator("input.abort").fill("30")
            await row.locator("select.status").select_option("UNAVAILABLE")
            await row.locator("button.inject").click()
            await expect(row.locator("td.in-force")).to_have_text(
                Fault.of(abort_percent=30, grpc_status="UNAVAILABLE").describe(), timeout=WAIT_MS
            )
            in_force = await faults.active(mesh, "payments")
            assert in_force == {"payments-0": {ABORT_PERCENT: "30", ABORT_GRPC_STATUS: "14"}}
            during = await until_page(
                page,
                f"(key) => {{ const edge = ({EDGE})(key);"
                f" return edge.retries >= {before['retries'] + MORE_RETRIES} ? edge : null; }}",
                "orders>payments",
            )
            assert during["success"] >= 0.99, during
            assert during["gateway"] >= 0.99, during
            assert during["colour"] == "good", during

            await row.locator("button.clear").click()
            await expect(row.locator("td.in-force")).to_have_text("none", timeout=WAIT_MS)
            assert await faults.active(mesh, "payments") == {"payments-0": {}}
            await page.click("#load-stop")
            await expect(page.locator("#load-state")).to_have_attribute(
                "data-state", "finished", timeout=WAIT_MS
            )

            await one_state_loop(page)
            await open_a_checkout_trace(page, mesh)
            await markup_in_a_name_is_text(page)
            assert errors == []
    finally:
        await faults.clear(mesh, "payments")


async def open_a_checkout_trace(page: Page, mesh: RunningMesh) -> None:
    """Click a checkout in the list of recent traces; its waterfall shows every span the
    collector has of it, from every process a checkout passes through."""
    trace_id = await until_page(
        page,
        """(services) => {
          for (const row of document.querySelectorAll("#traces tr[data-trace-id]")) {
            const seen = row.dataset.services.split(" ");
            if (row.dataset.root === "edge /shop.orders.v1.OrdersService/PlaceOrder"
                && services.every((s) => seen.includes(s))) return row.dataset.traceId;
          }
          return null;
        }""",
        list(CHECKOUT_SERVICES),
    )
    shown: list[dict[str, str]] = []

    async def every_span_shown() -> bool:
        await page.click(f'#traces tr[data-trace-id="{trace_id}"]')
        await expect(page.locator("#trace-title")).to_contain_text(trace_id, timeout=WAIT_MS)
        shown[:] = await page.locator("#waterfall .span-row[data-span-id]").evaluate_all(
            "(rows) => rows.map((r) => ({ id: r.dataset.spanId, service: r.dataset.service }))"
        )
        stored = {span.span_id for span in reader(mesh).spans(trace_id)}
        return {row["id"] for row in shown} == stored

    await eventually(every_span_shown, TRACE_DEADLINE, f"every span of {trace_id} shown", 0.5)
    assert set(CHECKOUT_SERVICES) <= {row["service"] for row in shown}


async def one_state_loop(page: Page) -> None:
    """Refreshes asked for while the state is being fetched (as clicks on Inject, Clear or a
    new window ask) are made one after the other by the one loop: never two requests at once,
    neither now nor since the page was opened."""
    answered = await page.evaluate("() => window.stateRequests.answered")
    await page.evaluate("() => { refreshState(); refreshState(); refreshState(); }")
    seen = await until_page(
        page,
        "(before) => window.stateRequests.answered >= before + 3 && window.stateRequests",
        answered,
    )
    assert seen["most"] == 1, seen


async def markup_in_a_name_is_text(page: Page) -> None:
    """A waterfall row named with a request path holding markup, as the server sends it, drawn
    by the page: the name is the row's text, and no element is made of it."""
    hostile = span("edge", "", f"edge {HOSTILE_PATH}", 0, 1, service=GATEWAY)
    shown = await page.evaluate(
        """(trace) => {
          renderWaterfall(trace);
          const operation = document.querySelector('#waterfall [data-span-id="edge"]').children[1];
          return {
            text: operation.textContent,
            title: operation.getAttribute("title"),
            elements: operation.children.length,
            images: document.querySelectorAll("#waterfall img").length,
          };
        }""",
        waterfall("f" * 32, [hostile]),
    )
    name = f"edge {HOSTILE_PATH}"
    assert shown == {"text": name, "title": name, "elements": 0, "images": 0}
