"""`make screenshot`: docs/dashboard.png, the dashboard of a mesh under load with a payments
fault, as headless Chromium (Debian's `chromium`, driven by Playwright) shows it. Starts the
mesh in a temporary directory and always stops it. The load and the fault are started from
the page, as a user would; the trace shown is a checkout whose charge was retried."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from playwright.async_api import Page

from scripts.shots import ROOT, chromium_missing, mesh_and_page, save
from shopmesh.local.dashboard import dashboard_link
from shopmesh.observe.traces import TraceReader, waterfall_rows
from tests.support.traces import CHECKOUT_SERVICES

WAIT_MS = 60_000


async def drive(page: Page, url: str, traces: TraceReader, rate: int, settle_ms: int) -> None:
    """Start the load, let traffic build up, inject the payments fault, open a trace."""
    await page.goto(url)
    await page.fill("#load-rate", str(rate))
    await page.fill("#load-duration", "120")
    await page.click("#load-start")
    # As the browser test does: enough calls in the window for a success rate to mean
    # something before the fault (tests/mesh/test_dashboard.py says why).
    await page.wait_for_function(
        "() => [...document.querySelectorAll('[data-node]')]"
        ".every((node) => Number(node.dataset.rps) > 0)"
        " && Number(document.querySelector('[data-edge=\"orders>payments\"]')"
        ".dataset.calls) >= 100",
        timeout=WAIT_MS,
    )
    row = page.locator('[data-fault-row="payments"]')
    await row.locator("input.abort").fill("30")
    await row.locator("select.status").select_option("UNAVAILABLE")
    await row.locator("button.inject").click()
    await page.wait_for_function(
        "() => Number(document.querySelector('[data-edge=\"orders>payments\"]')"
        ".dataset.retries) >= 5",
        timeout=WAIT_MS,
    )
    await page.wait_for_timeout(settle_ms)
    # The most telling trace: a checkout whose charge was retried. It may have left the
    # page's short list already, so it is found in the collector and opened as a click would.
    trace_id = retried_checkout(traces)
    await page.evaluate("(traceId) => showTrace(traceId)", trace_id)
    await page.wait_for_selector("#waterfall .span-row[data-span-id]", timeout=WAIT_MS)
    await page.mouse.move(0, 0)  # no row highlighted by a hovering pointer


def retried_checkout(traces: TraceReader) -> str:
    """The newest complete checkout whose call to payments was retried (else any checkout);
    a failed span alone may be a declined card, not the fault."""
    checkouts = [
        summary.trace_id
        for summary in traces.recent(300)
        if summary.root_name.endswith("PlaceOrder")
        and set(CHECKOUT_SERVICES) <= set(summary.services)
    ]
    if not checkouts:
        raise SystemExit("no complete checkout trace yet: run with a longer --settle")
    for trace_id in checkouts:
        if any(
            (row.attempts or 0) > 1 and row.span.name == "attempt svc_payments"
            for row in waterfall_rows(traces.spans(trace_id))
        ):
            return trace_id
    return checkouts[0]


async def screenshot(out: Path, width: int, height: int, rate: int, settle_ms: int) -> None:
    async with mesh_and_page(width, height) as (mesh, page):
        link = dashboard_link(mesh.state)
        assert link is not None
        await drive(page, link.url, TraceReader(mesh.paths.traces), rate, settle_ms)
        await save(page, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=25, help="Load, calls a second.")
    parser.add_argument(
        "--settle", type=float, default=6.0, help="Seconds of load under the fault before."
    )
    args = parser.parse_args()
    if chromium_missing():
        return 1
    asyncio.run(screenshot(args.out, args.width, args.height, args.rate, int(args.settle * 1000)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
