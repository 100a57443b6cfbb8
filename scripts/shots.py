"""What the screenshot scripts share: a mesh in a temporary state directory and one page of
Debian's headless Chromium (driven by Playwright) at a given size, both always stopped."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import Page, async_playwright

from shopmesh.local.mesh import RunningMesh
from shopmesh.local.startup import MeshOptions, up
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parents[1]


def chromium_missing() -> bool:
    """True, having said what to do, when Debian's chromium is not installed."""
    if CHROMIUM.is_file():
        return False
    print("chromium not found: apt-get install chromium (make system-deps)", file=sys.stderr)
    return True


@contextlib.asynccontextmanager
async def mesh_and_page(
    width: int, height: int, **options: Any
) -> AsyncIterator[tuple[RunningMesh, Page]]:
    """The mesh (`options` override MeshOptions fields) and a browser page of `width` x
    `height`; the browser, the mesh and its state directory are gone when the block exits."""
    state_dir = Path(tempfile.mkdtemp(prefix="smshot-", dir="/tmp"))
    try:
        mesh = await up(
            MeshOptions(
                state_dir=state_dir,
                topology=ROOT / "envoy" / "mesh.yaml",
                descriptor=ROOT / "gen" / "shop.pb",
                storefront=ROOT / "web" / "dist",
                envoy_log_level="warning",
                **options,
            )
        )
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS
                )
                try:
                    yield mesh, await browser.new_page(viewport={"width": width, "height": height})
                finally:
                    await browser.close()
        finally:
            await mesh.stop()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


async def save(page: Page, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=out, full_page=True)
