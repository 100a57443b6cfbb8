"""`make screenshot-storefront`: docs/storefront.png, the storefront as headless Chromium
(Debian's `chromium`, driven by Playwright) shows it after a shopper signed up, bought two
products and had a card declined, with the notification of the confirmed order. Starts the
mesh without its dashboard in a temporary directory and always stops it."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright, expect

from shopmesh.local.startup import MeshOptions, up
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.storefront import WAIT_MS, add_to_cart, check_out, sign_up

ROOT = Path(__file__).resolve().parents[1]


async def screenshot(out: Path, width: int, height: int) -> None:
    state_dir = Path(tempfile.mkdtemp(prefix="smshot-", dir="/tmp"))
    try:
        mesh = await up(
            MeshOptions(
                state_dir=state_dir,
                topology=ROOT / "envoy" / "mesh.yaml",
                descriptor=ROOT / "gen" / "shop.pb",
                storefront=ROOT / "web" / "dist",
                envoy_log_level="warning",
                dashboard=False,
            )
        )
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS
                )
                try:
                    page = await browser.new_page(viewport={"width": width, "height": height})
                    await page.goto(f"http://{mesh.gateway_address}/")
                    await sign_up(page)
                    await add_to_cart(page, "STICKER-01", 2)
                    await add_to_cart(page, "HOODIE-01")
                    await check_out(page, "tok_visa")
                    await expect(page.locator("#notifications li strong").first).to_be_visible(
                        timeout=WAIT_MS
                    )
                    await add_to_cart(page, "MUG-01")
                    await check_out(page, "tok_chargeDeclined")
                    await add_to_cart(page, "POSTER-LTD")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=out, full_page=True)
                finally:
                    await browser.close()
        finally:
            await mesh.stop()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "storefront.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        print("chromium not found: apt-get install chromium (make system-deps)", file=sys.stderr)
        return 1
    asyncio.run(screenshot(args.out, args.width, args.height))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
