"""Payments domain and store: validation, the simulated processor, idempotent charges and
refunds, atomic writes, durability."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PreconditionViolation,
)
from services.common.money import Money
from services.payments.domain import (
    PAYMENT_ID_PREFIX,
    ChargeAttempt,
    Decline,
    Payment,
    Payments,
    PaymentStatus,
    authorize,
    card_of,
    validate_charge,
)
from services.payments.store import SqlPaymentStore
from tests.support.clock import ManualClock
from tests.support.databases import INTEGRITY_ERRORS, count_rows

T0 = datetime(2025, 3, 1, 12, 0, 0, 250001, tzinfo=UTC)
USD_12_99 = Money("USD", 1299)
KEY = b"k" * 32
OWNER = "usr_ada"
"""The card-fingerprint key of these tests' install."""


@pytest.fixture
def db_path(db_location: Path | str) -> Path | str:
    return db_location


@pytest.fixture
async def store(db_path: Path | str) -> AsyncIterator[SqlPaymentStore]:
    store = await SqlPaymentStore.open(db_path, KEY)
    yield store
    await store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def payments(store: SqlPaymentStore, clock: ManualClock) -> Payments:
    return Payments(store, KEY, clock=clock)


async def charge(
    payments: Payments,
    key: str = "key-1",
    *,
    order_id: str = "ord_1",
    amount: Money = USD_12_99,
    payment_token: str = "tok_visa",
    owner: str | None = OWNER,
) -> Payment:
    return await payments.charge(key, order_id, amount, payment_token, owner)


def test_valid_charge_request_becomes_an_attempt() -> None:
    assert validate_charge("key-1", "ord_1", USD_12_99, "tok_mastercard", KEY) == ChargeAttempt(
        "key-1", "ord_1", USD_12_99, card_of("tok_mastercard", KEY)
    )


def test_every_missing_charge_field_is_reported() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_charge("", "", None, "", KEY)
    assert raised.value.violations == [
        FieldViolation("idempotency_key", "must not be empty"),
        FieldViolation("order_id", "must not be empty"),
        FieldViolation("amount", "must be set"),
        FieldViolation("payment_token", "must not be empty"),
    ]


@pytest.mark.parametrize("currency", ["usd", "US", "USDX", "", "U5D"])
def test_malformed_currency_is_rejected(currency: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_charge("key-1", "ord_1", Money(currency, 100), "tok_visa", KEY)
    assert [v.field for v in raised.value.violations] == ["amount.currency_code"]


@pytest.mark.parametrize("minor_units", [0, -1])
def test_amount_must_be_positive(minor_units: int) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_charge("key-1", "ord_1", Money("USD", minor_units), "tok_visa", KEY)
    assert raised.value.violations == [
        FieldViolation("amount.minor_units", "must be greater than 0")
    ]


def test_too_long_key_and_order_id_are_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_charge("k" * 256, "o" * 256, USD_12_99, "tok_visa", KEY)
    assert [v.field for v in raised.value.violations] == ["idempotency_key", "order_id"]


def test_unknown_test_token_is_invalid_payment_token() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_charge("key-1", "ord_1", USD_12_99, "tok_amex", KEY)
    [violation] = raised.value.violations
    assert violation.field == "payment_token"
    assert violation.description.startswith("unknown test token")


def test_token_without_tok_prefix_is_invalid_payment_token() -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_charge("key-1", "ord_1", USD_12_99, "4242424242424242", KEY)
    assert raised.value.violations == [
        FieldViolation("payment_token", "must be a payment token starting with 'tok_'")
    ]


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [
        ("tok_visa", None),
        ("tok_mastercard", None),
        ("tok_chargeDeclined", "generic_decline"),
        ("tok_insufficientFunds", "insufficient_funds"),
    ],
)
def test_simulated_processor_follows_the_test_tokens(token: str, decline_code: str | None) -> None:
    decline = authorize(token)
    assert (None if decline is None else decline.code) == decline_code


def test_a_card_is_a_keyed_fingerprint_with_the_brand_and_last_four_of_its_token() -> None:
    card = card_of("tok_mastercard", KEY)
    assert (card.brand, card.last4) == ("mastercard", "4444")
    assert card.fingerprint == hmac.new(KEY, b"tok_mastercard", hashlib.sha256).hexdigest()
    assert card_of("tok_mastercard", KEY) == card
    # Another install's fingerprint of the same token tells nothing about this one's.
    assert card_of("tok_mastercard", b"o" * 32).fingerprint != card.fingerprint
    assert card.fingerprint != hashlib.sha256(b"tok_mastercard").hexdigest()


async def test_charge_captures_a_payment(payments: Payments) -> None:
    payment = await charge(payments)
    assert payment.payment_id.startswith(PAYMENT_ID_PREFIX)
    assert (payment.order_id, payment.amount, payment.status) == (
        "ord_1",
        USD_12_99,
        PaymentStatus.CAPTURED,
    )
    assert payment.create_time == payment.update_time == T0


async def test_get_returns_the_charged_payment(payments: Payments) -> None:
    payment = await charge(payments)
    assert await payments.get(OWNER, payment.payment_id) == payment


async def test_repeated_charge_with_same_key_returns_the_same_payment(
    payments: Payments, clock: ManualClock, db_path: Path | str
) -> None:
    first = await charge(payments)
    clock.now = T0 + timedelta(seconds=5)
    assert await charge(payments) == first
    assert count_rows(db_path, "SELECT COUNT(*) FROM payments") == 1


async def test_different_keys_make_different_payments(
    payments: Payments, db_path: Path | str
) -> None:
    first = await charge(payments, "key-1")
    second = await charge(payments, "key-2")
    assert first.payment_id != second.payment_id
    assert count_rows(db_path, "SELECT COUNT(*) FROM payments") == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"amount": Money("USD", 1300)},
        {"amount": Money("EUR", 1299)},
        {"order_id": "ord_2"},
        {"payment_token": "tok_mastercard"},
    ],
)
async def test_same_key_with_different_parameters_is_key_reuse(
    payments: Payments, db_path: Path | str, changes: dict[str, Any]
) -> None:
    await charge(payments)
    with pytest.raises(AlreadyExists) as raised:
        await charge(payments, **changes)
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert raised.value.metadata == {"idempotency_key": "key-1"}
    assert count_rows(db_path, "SELECT COUNT(*) FROM payments") == 1


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [("tok_chargeDeclined", "generic_decline"), ("tok_insufficientFunds", "insufficient_funds")],
)
async def test_declined_card_is_card_declined_with_its_code(
    payments: Payments, db_path: Path | str, token: str, decline_code: str
) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        await charge(payments, payment_token=token)
    assert raised.value.reason == "CARD_DECLINED"
    assert raised.value.metadata == {"decline_code": decline_code}
    [violation] = raised.value.violations
    assert (violation.type, violation.subject) == ("PAYMENT_METHOD", "payment_token")
    assert count_rows(db_path, "SELECT COUNT(*) FROM payments") == 0


async def test_declined_attempt_is_recorded_and_replayed(
    payments: Payments, db_path: Path | str
) -> None:
    with pytest.raises(FailedPrecondition) as first:
        await charge(payments, payment_token="tok_insufficientFunds")
    with pytest.raises(FailedPrecondition) as again:
        await charge(payments, payment_token="tok_insufficientFunds")
    assert (again.value.reason, again.value.metadata, again.value.violations) == (
        first.value.reason,
        first.value.metadata,
        first.value.violations,
    )
    assert count_rows(db_path, "SELECT COUNT(*) FROM charge_attempts") == 1


async def test_retrying_a_declined_key_with_another_card_is_key_reuse(payments: Payments) -> None:
    with pytest.raises(FailedPrecondition):
        await charge(payments, payment_token="tok_chargeDeclined")
    with pytest.raises(AlreadyExists) as raised:
        await charge(payments, payment_token="tok_visa")
    assert raised.value.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_refund_marks_the_payment_refunded(payments: Payments, clock: ManualClock) -> None:
    payment = await charge(payments)
    clock.now = T0 + timedelta(minutes=3)
    refunded = await payments.refund(payment.payment_id)
    assert refunded.status is PaymentStatus.REFUNDED
    assert (refunded.create_time, refunded.update_time) == (T0, T0 + timedelta(minutes=3))
    assert await payments.get(OWNER, payment.payment_id) == refunded


async def test_refunding_twice_returns_the_first_refund(
    payments: Payments, clock: ManualClock
) -> None:
    payment = await charge(payments)
    clock.now = T0 + timedelta(minutes=3)
    first = await payments.refund(payment.payment_id)
    clock.now = T0 + timedelta(minutes=9)
    assert await payments.refund(payment.payment_id) == first


async def test_replaying_a_charge_after_refund_reports_the_refund(payments: Payments) -> None:
    payment = await charge(payments)
    refunded = await payments.refund(payment.payment_id)
    assert await charge(payments) == refunded


async def test_refund_of_unknown_payment_is_payment_not_found(payments: Payments) -> None:
    with pytest.raises(NotFound) as raised:
        await payments.refund("pay_missing")
    assert (raised.value.reason, raised.value.metadata) == (
        "PAYMENT_NOT_FOUND",
        {"payment_id": "pay_missing"},
    )


async def test_get_unknown_payment_is_payment_not_found(payments: Payments) -> None:
    with pytest.raises(NotFound) as raised:
        await payments.get(OWNER, "pay_missing")
    assert raised.value.reason == "PAYMENT_NOT_FOUND"


async def test_a_charge_records_its_owner(payments: Payments) -> None:
    assert (await charge(payments)).owner_user_id == OWNER


async def test_get_of_someone_elses_payment_is_exactly_an_unknown_ones(payments: Payments) -> None:
    payment = await charge(payments)
    with pytest.raises(NotFound) as other:
        await payments.get("usr_grace", payment.payment_id)
    with pytest.raises(NotFound) as unknown:
        await payments.get(OWNER, "pay_missing")
    assert other.value == replace(
        unknown.value,
        message=unknown.value.message.replace("pay_missing", payment.payment_id),
        metadata={"payment_id": payment.payment_id},
    )


async def test_a_payment_charged_for_nobody_is_readable_by_nobody(payments: Payments) -> None:
    payment = await charge(payments, owner=None)
    with pytest.raises(NotFound):
        await payments.get(OWNER, payment.payment_id)


@pytest.mark.parametrize("operation", ["get", "refund"])
async def test_empty_payment_id_is_invalid(payments: Payments, operation: str) -> None:
    call = payments.get(OWNER, "") if operation == "get" else payments.refund("")
    with pytest.raises(InvalidArgument) as raised:
        await call
    assert raised.value.violations == [FieldViolation("payment_id", "must not be empty")]


async def test_payment_is_not_kept_without_its_idempotency_record(
    store: SqlPaymentStore, db_path: Path | str
) -> None:
    attempt = ChargeAttempt("key-1", "ord_1", USD_12_99, card_of("tok_visa", KEY))
    payment = Payment("pay_1", "ord_1", USD_12_99, PaymentStatus.CAPTURED, T0, T0)
    # A record with both a payment and a decline violates the attempts table's CHECK, so the
    # second INSERT fails after the first succeeded: the transaction must undo both.
    with pytest.raises(INTEGRITY_ERRORS):
        await store.record_charge(attempt, payment, Decline("generic_decline", "declined"), T0)
    assert await store.get("pay_1") is None
    assert count_rows(db_path, "SELECT COUNT(*) FROM charge_attempts") == 0


async def test_payments_and_keys_survive_a_restart(payments: Payments, db_path: Path | str) -> None:
    payment = await charge(payments)
    with pytest.raises(FailedPrecondition):
        await charge(payments, "key-2", payment_token="tok_chargeDeclined")
    reopened = await SqlPaymentStore.open(db_path, KEY)
    try:
        restarted = Payments(reopened, KEY, clock=ManualClock(T0 + timedelta(hours=1)))
        assert await restarted.get(OWNER, payment.payment_id) == payment
        assert await charge(restarted) == payment
        with pytest.raises(FailedPrecondition) as raised:
            await charge(restarted, "key-2", payment_token="tok_chargeDeclined")
        assert raised.value.metadata == {"decline_code": "generic_decline"}
        assert count_rows(db_path, "SELECT COUNT(*) FROM payments") == 1
    finally:
        await reopened.close()


async def test_card_declined_carries_a_precondition_violation(payments: Payments) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        await charge(payments, payment_token="tok_chargeDeclined")
    assert raised.value.violations == [
        PreconditionViolation("PAYMENT_METHOD", "payment_token", "the card was declined")
    ]
