"""The storefront (web/) as a shopper uses it, in a Playwright page: what the browser test and
`make screenshot-storefront` (scripts/screenshot_storefront.py) do on it."""

from __future__ import annotations

import uuid

from playwright.async_api import Page, expect

WAIT_MS = 20_000
"""Bounds each wait on the page (PlaceOrder's budget at the gateway is 10 s)."""
PASSWORD = "a storefront tester's password"


async def sign_up(page: Page, name: str = "Ada Storefront") -> str:
    """Create an account from the page's form (it signs in at once); the email."""
    email = f"web-{uuid.uuid4().hex[:12]}@example.com"
    form = page.locator("#sign-up")
    await form.locator('input[name="email"]').fill(email)
    await form.locator('input[name="display_name"]').fill(name)
    await form.locator('input[name="password"]').fill(PASSWORD)
    await form.locator('button[type="submit"]').click()
    await expect(page.locator("#who")).to_have_text(email, timeout=WAIT_MS)
    return email


async def add_to_cart(page: Page, sku: str, times: int = 1) -> None:
    button = page.locator(f'article.product[data-sku="{sku}"] button')
    for _ in range(times):
        await button.click()


async def check_out(page: Page, payment_token: str) -> str:
    """Check the cart out with `payment_token`; the result the page shows."""
    await page.locator("#payment-token").select_option(payment_token)
    await page.locator("#checkout").click()
    result = page.locator("#checkout-result")
    await expect(result).not_to_have_text("Placing your order…", timeout=WAIT_MS)
    await expect(result).not_to_be_empty(timeout=WAIT_MS)
    return await result.inner_text()
