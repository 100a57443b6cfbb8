"""The headless Chromium of the browser tests and the screenshots (tests/support/browser.py),
started for a closed network."""

from __future__ import annotations

from tests.support.browser import CHROMIUM_ARGS


def test_chromium_starts_without_background_networking_component_updates_or_sync() -> None:
    assert {
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    } <= set(CHROMIUM_ARGS)
