"""Payments domain: charge validation, the simulated card processor, and the charge/refund rules.

A payment token is used to authorize a charge and then forgotten: what is kept of it is its
`Card`, as a real processor integration keeps it, a fingerprint keyed with this install's
secret (a plain hash of a few well-known test tokens would give them back) with the brand and
last four digits of the card the token stands for.

Each payment records its owner, the shopper orders charged it for (the caller of Charge), and
GetPayment answers only its owner: someone else's payment, and one charged before owners were
recorded (owner ""), is NOT_FOUND with the very words of a payment id that does not exist.

No grpc here: the servicer converts protos to these calls, and DomainErrors raised here become
status codes in the shared error-mapping interceptor.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol

from services.common.clock import utc_now
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PreconditionViolation,
    Validator,
)
from services.common.money import Money, is_currency_code

MAX_KEY_LENGTH = 255
PAYMENT_ID_PREFIX = "pay_"
TOKEN_PREFIX = "tok_"


class PaymentStatus(Enum):
    """Where a payment is in its life cycle."""

    CAPTURED = "CAPTURED"
    REFUNDED = "REFUNDED"


@dataclass(frozen=True)
class Payment:
    """A successful charge. Times are timezone-aware UTC."""

    payment_id: str
    order_id: str
    amount: Money
    status: PaymentStatus
    create_time: datetime
    update_time: datetime
    owner_user_id: str = ""
    """The user the charge was made for ("" when Charge named no caller, or before owners were
    recorded): the only caller GetPayment answers."""


@dataclass(frozen=True)
class Decline:
    """Why the card processor refused a charge: a stable code and a human-readable message."""

    code: str
    message: str


@dataclass(frozen=True)
class Card:
    """What is kept of a payment token: its keyed fingerprint (equal for equal tokens, and
    meaningless without this install's key), and the brand and last four digits of its card."""

    fingerprint: str
    brand: str
    last4: str


@dataclass(frozen=True)
class ChargeAttempt:
    """A validated Charge request: what its idempotency key stands for (the same card is the
    same fingerprint)."""

    idempotency_key: str
    order_id: str
    amount: Money
    card: Card


@dataclass(frozen=True)
class ChargeRecord:
    """An attempt stored under its idempotency key with its outcome: a payment or a decline."""

    attempt: ChargeAttempt
    payment: Payment | None
    decline: Decline | None


@dataclass(frozen=True)
class SimulatedCard:
    """The card a test token stands for, and how the simulated processor answers it (no
    decline: it approves)."""

    brand: str
    last4: str
    decline: Decline | None = None


# The simulated processor's test tokens (documented in payments.proto), with the cards of the
# well-known processor test numbers they stand for.
TEST_TOKENS: Mapping[str, SimulatedCard] = {
    "tok_visa": SimulatedCard("visa", "4242"),
    "tok_mastercard": SimulatedCard("mastercard", "4444"),
    "tok_chargeDeclined": SimulatedCard(
        "visa", "0002", Decline("generic_decline", "the card was declined")
    ),
    "tok_insufficientFunds": SimulatedCard(
        "visa", "9995", Decline("insufficient_funds", "the card has insufficient funds")
    ),
}
UNKNOWN_CARD = SimulatedCard("unknown", "")
"""What a token no longer among the test tokens is kept as (a database of an older release)."""


def card_of(payment_token: str, fingerprint_key: bytes) -> Card:
    """What is kept of `payment_token`: HMAC-SHA256 under `fingerprint_key`, brand, last four."""
    simulated = TEST_TOKENS.get(payment_token, UNKNOWN_CARD)
    fingerprint = hmac.new(fingerprint_key, payment_token.encode(), hashlib.sha256).hexdigest()
    return Card(fingerprint, simulated.brand, simulated.last4)


class PaymentStore(Protocol):
    """Persistence the payments domain needs (implemented by services.payments.store)."""

    async def record_charge(
        self,
        attempt: ChargeAttempt,
        payment: Payment | None,
        decline: Decline | None,
        now: datetime,
    ) -> tuple[bool, ChargeRecord]:
        """In one transaction: if `attempt.idempotency_key` is known, return (True, the stored
        record with its payment as it is now); else store the attempt at `now` with its outcome
        (the payment or the decline) and return (False, that record)."""
        ...

    async def get(self, payment_id: str) -> Payment | None:
        """The payment with `payment_id`, or None."""
        ...

    async def refund(self, payment_id: str, now: datetime) -> Payment | None:
        """Atomically mark the payment refunded at `now` unless it already is; None if it does
        not exist."""
        ...


def authorize(payment_token: str) -> Decline | None:
    """The simulated card processor: None if it approves a (known, valid) token, else the
    decline."""
    return TEST_TOKENS[payment_token].decline


def validate_charge(
    idempotency_key: str,
    order_id: str,
    amount: Money | None,
    payment_token: str,
    fingerprint_key: bytes,
) -> ChargeAttempt:
    """Validate a Charge request into the attempt it stands for, its token replaced by its
    card; raises InvalidArgument naming every bad field.

    `amount` is None when the request did not set it.
    """
    check = Validator()
    if check.require(bool(idempotency_key), "idempotency_key", "must not be empty"):
        check.require(
            len(idempotency_key) <= MAX_KEY_LENGTH,
            "idempotency_key",
            f"must be at most {MAX_KEY_LENGTH} characters",
        )
    if check.require(bool(order_id), "order_id", "must not be empty"):
        check.require(
            len(order_id) <= MAX_KEY_LENGTH,
            "order_id",
            f"must be at most {MAX_KEY_LENGTH} characters",
        )
    if check.require(amount is not None, "amount", "must be set") and amount is not None:
        check.require(
            is_currency_code(amount.currency_code),
            "amount.currency_code",
            "must be a three-letter upper-case ISO 4217 code such as USD",
        )
        check.require(amount.minor_units > 0, "amount.minor_units", "must be greater than 0")
    if check.require(bool(payment_token), "payment_token", "must not be empty"):
        check.require(
            payment_token in TEST_TOKENS,
            "payment_token",
            f"unknown test token; use one of {', '.join(TEST_TOKENS)}"
            if payment_token.startswith(TOKEN_PREFIX)
            else f"must be a payment token starting with {TOKEN_PREFIX!r}",
        )
    check.raise_if_invalid("invalid Charge request")
    assert amount is not None  # checked above; tells the type checker
    return ChargeAttempt(idempotency_key, order_id, amount, card_of(payment_token, fingerprint_key))


def validate_payment_id(payment_id: str) -> str:
    """Check that a payment id was given; raises InvalidArgument if it is empty."""
    check = Validator()
    check.require(bool(payment_id), "payment_id", "must not be empty")
    check.raise_if_invalid("invalid payment id")
    return payment_id


def card_declined(decline: Decline) -> FailedPrecondition:
    """The error a declined charge is reported with (the same on every replay)."""
    return FailedPrecondition(
        f"card declined: {decline.message}",
        reason="CARD_DECLINED",
        metadata={"decline_code": decline.code},
        violations=[PreconditionViolation("PAYMENT_METHOD", "payment_token", decline.message)],
    )


def payment_not_found(payment_id: str) -> NotFound:
    """The error for an unknown payment id."""
    return NotFound(
        f"payment {payment_id!r} does not exist",
        reason="PAYMENT_NOT_FOUND",
        metadata={"payment_id": payment_id},
    )


def new_payment_id() -> str:
    """A fresh, unguessable payment id."""
    return PAYMENT_ID_PREFIX + uuid.uuid4().hex


class Payments:
    """The payments service's behaviour: idempotent charges, idempotent full refunds."""

    def __init__(
        self,
        store: PaymentStore,
        fingerprint_key: bytes,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._fingerprint_key = fingerprint_key
        self._clock = clock

    async def charge(
        self,
        idempotency_key: str,
        order_id: str,
        amount: Money | None,
        payment_token: str,
        owner: str | None = None,
    ) -> Payment:
        """Charge a card once per idempotency key, for `owner` (the caller orders charges for;
        a replay keeps the first call's owner).

        Raises InvalidArgument for bad input, FailedPrecondition CARD_DECLINED when the card
        is (or, on a replay, was) declined, AlreadyExists IDEMPOTENCY_KEY_REUSED when the key
        was used for a different order, amount or card (another fingerprint).
        """
        attempt = validate_charge(
            idempotency_key, order_id, amount, payment_token, self._fingerprint_key
        )
        # The simulator is a pure function, so it can run before we know whether the key is
        # new. A real processor would be called only for a new key, with the attempt stored
        # as pending first and the processor's own idempotency key set to ours.
        decline = authorize(payment_token)
        now = self._clock()
        payment = (
            None
            if decline is not None
            else Payment(
                new_payment_id(),
                attempt.order_id,
                attempt.amount,
                PaymentStatus.CAPTURED,
                now,
                now,
                owner_user_id=owner or "",
            )
        )
        replayed, record = await self._store.record_charge(attempt, payment, decline, now)
        if replayed and record.attempt != attempt:
            raise AlreadyExists(
                "idempotency_key was already used for a different charge",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"idempotency_key": attempt.idempotency_key},
            )
        if record.decline is not None:
            raise card_declined(record.decline)
        assert record.payment is not None  # a record holds a payment or a decline
        return record.payment

    async def refund(self, payment_id: str) -> Payment:
        """Refund a payment in full; refunding a refunded payment returns it unchanged."""
        payment = await self._store.refund(validate_payment_id(payment_id), self._clock())
        if payment is None:
            raise payment_not_found(payment_id)
        return payment

    async def get(self, caller: str, payment_id: str) -> Payment:
        """The caller's payment with `payment_id`; raises NotFound PAYMENT_NOT_FOUND if there
        is none or it is not the caller's (see module docstring)."""
        payment = await self._store.get(validate_payment_id(payment_id))
        if payment is None or payment.owner_user_id != caller:
            raise payment_not_found(payment_id)
        return payment
