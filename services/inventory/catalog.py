"""The seed catalog: the products a new inventory database starts with, shipped in this package
as seed_catalog.json."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from services.common.money import Money, is_currency_code
from services.inventory.domain import Product

SEED_CATALOG = "seed_catalog.json"


def seed_catalog() -> list[Product]:
    """The catalog shipped in this package (services/inventory/seed_catalog.json)."""
    text = resources.files(__package__).joinpath(SEED_CATALOG).read_text(encoding="utf-8")
    return parse_catalog(json.loads(text))


def parse_catalog(document: Any) -> list[Product]:
    """The products of a seed catalog document (parsed JSON): `{"products": [{"sku", "name",
    "description", "price": {"currency_code", "minor_units"}, "on_hand"}, ...]}`.

    Raises ValueError naming the first bad entry: a broken catalog must stop the service at
    start rather than seed half a shop.
    """
    if not isinstance(document, dict) or not isinstance(document.get("products"), list):
        raise ValueError('seed catalog: expected an object with a "products" list')
    products: list[Product] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["products"]):
        where = f"seed catalog products[{index}]"
        try:
            price = entry["price"]
            product = Product(
                sku=str(entry["sku"]),
                name=str(entry["name"]),
                description=str(entry.get("description", "")),
                price=Money(str(price["currency_code"]), int(price["minor_units"])),
                on_hand=int(entry["on_hand"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: missing or malformed field ({error})") from None
        if not product.sku.strip() or product.sku in seen:
            raise ValueError(f"{where}: empty or duplicate sku {product.sku!r}")
        if not is_currency_code(product.price.currency_code) or product.price.minor_units < 0:
            raise ValueError(f"{where}: price must be a currency code and minor_units >= 0")
        if product.on_hand < 0:
            raise ValueError(f"{where}: on_hand must be >= 0")
        seen.add(product.sku)
        products.append(product)
    return products
