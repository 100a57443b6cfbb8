"""`make screenshot-storefront`: docs/storefront.png, the storefront as headless Chromium
(Debian's `chromium`, driven by Playwright) shows it after a shopper signed up, bought two
products and had a card declined, with the notification of the confirmed order. Starts the
mesh without its dashboard in a temporary directory and always stops it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from playwright.async_api import expect

from scripts.shots import ROOT, chromium_missing, mesh_and_page, save
from tests.support.storefront import WAIT_MS, add_to_cart, check_out, sign_up


async def screenshot(out: Path, width: int, height: int) -> None:
    async with mesh_and_page(width, height, dashboard=False) as (mesh, page):
        await page.goto(f"http://{mesh.gateway_address}/")
        await sign_up(page)
        await add_to_cart(page, "STICKER-01", 2)
        await add_to_cart(page, "HOODIE-01")
        await check_out(page, "tok_visa")
        await expect(page.locator("#notifications li strong").first).to_be_visible(timeout=WAIT_MS)
        await add_to_cart(page, "MUG-01")
        await check_out(page, "tok_chargeDeclined")
        await add_to_cart(page, "POSTER-LTD")
        await save(page, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "storefront.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    if chromium_missing():
        return 1
    asyncio.run(screenshot(args.out, args.width, args.height))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
