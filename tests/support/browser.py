"""A real headless browser for tests: Debian's `chromium` driven by Playwright for Python.
Playwright's own browser download cannot work on these machines, so it is pointed at the
system's browser; a failure says which browser it was. `make screenshot` (scripts/screenshot.py)
launches it with the same settings, imported from here."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright
from playwright.async_api import Error as PlaywrightError

CHROMIUM = Path("/usr/bin/chromium")
# As root (CI, these machines) Chromium runs only without its sandbox; /dev/shm is small in
# containers. The network is closed: no background requests (safe browsing, metrics, the
# variations seed), no component updates and no sync, so nothing waits on a server it cannot
# reach. Playwright adds these three by default today; said here, they hold whatever a
# Playwright release does.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_version() -> str:
    """What `chromium --version` says (or why it says nothing)."""
    try:
        done = subprocess.run(
            [str(CHROMIUM), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as error:
        return f"{CHROMIUM}: {error.strerror}"
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[-1]


def require_chromium() -> None:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: `make system-deps` installs Debian's chromium")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Chromium, always closed; a failure inside the block gets a note naming the
    browser and its version."""
    require_chromium()
    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except PlaywrightError as error:
            pytest.fail(f"cannot start {CHROMIUM} ({chromium_version()}): {error}")
        try:
            yield browser
        except BaseException as error:
            error.add_note(f"browser: {chromium_version()} (Playwright reports {browser.version})")
            raise
        finally:
            await browser.close()
