"""Money as integer minor units plus an ISO 4217 currency code: exact arithmetic, no floats."""

from __future__ import annotations

import re
from dataclasses import dataclass

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def is_currency_code(code: str) -> bool:
    """True for a three-letter upper-case ISO 4217-shaped code such as "USD"."""
    return bool(_CURRENCY.match(code))


@dataclass(frozen=True, order=True)
class Money:
    """An amount in one currency. Adding different currencies is a bug, so it raises."""

    currency_code: str
    minor_units: int

    def __add__(self, other: Money) -> Money:
        if other.currency_code != self.currency_code:
            raise ValueError(f"cannot add {other.currency_code} to {self.currency_code}")
        return Money(self.currency_code, self.minor_units + other.minor_units)

    def times(self, quantity: int) -> Money:
        """This amount multiplied by a whole quantity (a line total)."""
        return Money(self.currency_code, self.minor_units * quantity)

    @staticmethod
    def zero(currency_code: str) -> Money:
        """No money in `currency_code`."""
        return Money(currency_code, 0)
