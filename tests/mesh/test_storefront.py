"""The storefront in a real headless browser (Debian's chromium, driven by Playwright) over the
real mesh, served by the gateway at `/` and calling it over gRPC-Web: a new shopper signs up,
buys two products with tok_visa and sees the order CONFIRMED and its notification arrive on
the live watch; a declined card shows why; more of the limited poster than there is shows the
shortage; a shopper who signs out and in again finds their order in the history and cancels
it; an invalid email shows its field message beside the field (from BadRequest)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, expect

from shopmesh.local.mesh import RunningMesh
from tests.support.browser import chromium
from tests.support.storefront import PASSWORD, WAIT_MS, add_to_cart, check_out, sign_up

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def open_storefront(page: Page, mesh: RunningMesh) -> None:
    response = await page.goto(f"http://{mesh.gateway_address}/")
    assert response is not None
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    await expect(page.locator("article.product").first).to_be_visible(timeout=WAIT_MS)


@contextlib.asynccontextmanager
async def storefront(mesh: RunningMesh) -> AsyncIterator[tuple[Page, list[str]]]:
    """The storefront loaded in a page of headless Chromium, and the list the page's uncaught
    errors go to."""
    async with chromium() as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await open_storefront(page, mesh)
        yield page, errors


async def stock(page: Page, sku: str) -> int:
    """What the product grid says is in stock ("12 in stock"; "Sold out" is 0)."""
    text = await page.locator(f'article.product[data-sku="{sku}"] .stock').inner_text()
    return 0 if text == "Sold out" else int(text.removesuffix(" in stock"))


async def test_a_shopper_buys_two_products_and_is_notified(mesh: RunningMesh) -> None:
    async with storefront(mesh) as (page, errors):
        sticker = page.locator('article.product[data-sku="STICKER-01"]')
        await expect(sticker.locator(".price")).to_have_text(re.compile(r"^\$\d+\.\d\d$"))
        await expect(sticker.locator(".stock")).to_have_text(re.compile(r"^\d+ in stock$"))
        await sign_up(page)

        await add_to_cart(page, "STICKER-01")
        await add_to_cart(page, "HOODIE-01")
        result = await check_out(page, "tok_visa")
        assert "CONFIRMED" in result, result
        order_id = result.split()[1]
        notification = page.locator(f'#notifications li[data-order-id="{order_id}"]')
        await expect(notification).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator(f'#orders tr[data-order-id="{order_id}"]')).to_contain_text(
            "CONFIRMED", timeout=WAIT_MS
        )

        await add_to_cart(page, "STICKER-01")
        declined = await check_out(page, "tok_chargeDeclined")
        assert "declined" in declined.lower(), declined
        assert "CARD_DECLINED" in declined, declined

        # The sticker is still in the cart (a rejected order keeps it); one poster too many.
        left = await stock(page, "POSTER-LTD")
        await add_to_cart(page, "POSTER-LTD", left + 1)
        short = await check_out(page, "tok_visa")
        assert short.startswith("Not enough stock"), short
        assert f"Limited edition mesh poster: {left} left, {left + 1} ordered" in short, short
        assert "Sticker" not in short, short
        assert errors == []


async def test_a_returning_shopper_sees_their_order_and_cancels_it(mesh: RunningMesh) -> None:
    async with storefront(mesh) as (page, errors):
        email = await sign_up(page, "Returning Shopper")
        before = await stock(page, "MUG-01")
        await add_to_cart(page, "MUG-01", 2)
        result = await check_out(page, "tok_visa")
        assert "CONFIRMED" in result, result
        order_id = result.split()[1]
        await expect(page.locator(".product[data-sku='MUG-01'] .stock")).to_have_text(
            f"{before - 2} in stock", timeout=WAIT_MS
        )

        await page.locator("#sign-out").click()
        await expect(page.locator("#signed-in")).to_be_hidden()
        # The history is gone with the session, so what shows after signing in is fresh.
        await expect(page.locator("#orders")).to_have_text("Sign in to see your orders")
        form = page.locator("#sign-in")
        await form.locator('input[name="email"]').fill(email)
        await form.locator('input[name="password"]').fill(PASSWORD)
        await form.locator('button[type="submit"]').click()
        await expect(page.locator("#who")).to_have_text(email, timeout=WAIT_MS)

        row = page.locator(f'#orders tr[data-order-id="{order_id}"]')
        await expect(row.locator(".status")).to_have_text("CONFIRMED", timeout=WAIT_MS)
        await expect(row).to_contain_text("2 \N{MULTIPLICATION SIGN} MUG-01")
        await expect(page.locator("#orders tr")).to_have_count(1)
        await row.get_by_role("button", name="Cancel").click()

        await expect(row.locator(".status")).to_have_text("CANCELLED", timeout=WAIT_MS)
        await expect(row).to_contain_text("cancelled by the shopper")
        await expect(row.get_by_role("button", name="Cancel")).to_have_count(0)
        # Its stock is back on sale, and the page says so.
        await expect(page.locator(".product[data-sku='MUG-01'] .stock")).to_have_text(
            f"{before} in stock", timeout=WAIT_MS
        )
        await expect(page.locator("#banner")).to_be_hidden()
        assert errors == []


async def test_an_invalid_email_shows_its_field_message(mesh: RunningMesh) -> None:
    async with storefront(mesh) as (page, _):
        form = page.locator("#sign-up")
        await form.locator('input[name="email"]').fill("not-an-email")
        await form.locator('input[name="display_name"]').fill("Ada")
        await form.locator('input[name="password"]').fill("a long enough password")
        await form.locator('button[type="submit"]').click()

        beside = form.locator('.field-error[data-field="email"]')
        await expect(beside).to_contain_text("email address", timeout=WAIT_MS)
        await expect(form.locator('input[name="email"]')).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#signed-in")).to_be_hidden()
