"""PaymentsService over a real grpc.aio server on a temporary Unix socket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import grpc
import pytest
from grpc import aio

from services.common.status import field_violations
from services.payments.app import build
from shop.common.v1 import money_pb2
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.support.callers import as_user
from tests.support.databases import ON_BOTH_BACKENDS, count_rows
from tests.support.db_locks import WriteWatch, serves_while_a_write_waits
from tests.support.errors import expect_error_info
from tests.support.services import ServiceRunner

pytestmark = ON_BOTH_BACKENDS

Channels = Callable[[str], aio.Channel]
# The async stub class exists only in the generated .pyi, hence the string.
Stub: TypeAlias = "payments_pb2_grpc.PaymentsServiceAsyncStub"
PAYMENT_ROWS = "SELECT COUNT(*) FROM payments"
SHOPPER = "usr_ada"
"""Whom orders charges for in these tests: the caller of Charge, and so the payment's owner."""


def usd(minor_units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", minor_units=minor_units)


def charge_request(
    key: str = "key-1", amount: int = 1299, token: str = "tok_visa", order_id: str = "ord_1"
) -> payments_pb2.ChargeRequest:
    return payments_pb2.ChargeRequest(
        idempotency_key=key, order_id=order_id, amount=usd(amount), payment_token=token
    )


@pytest.fixture
def db_path(services: ServiceRunner) -> Path | str:
    return services.config("payments").database


@pytest.fixture
async def payments(services: ServiceRunner, channels: Channels) -> Stub:
    running = await services.start("payments", build)
    return payments_pb2_grpc.PaymentsServiceStub(channels(running.address))


async def test_charge_captures_and_get_payment_returns_it(payments: Stub) -> None:
    charged = await payments.Charge(charge_request(), metadata=as_user(SHOPPER))
    payment = charged.payment
    assert payment.payment_id.startswith("pay_")
    assert (payment.order_id, payment.amount, payment.status) == (
        "ord_1",
        usd(1299),
        payments_pb2.PAYMENT_STATUS_CAPTURED,
    )
    assert payment.create_time == payment.update_time
    fetched = await payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=payment.payment_id), metadata=as_user(SHOPPER)
    )
    assert fetched.payment == payment


async def test_repeated_charge_with_same_key_makes_one_payment(
    payments: Stub, db_path: Path | str
) -> None:
    first = await payments.Charge(charge_request(), metadata=as_user(SHOPPER))
    second = await payments.Charge(charge_request(), metadata=as_user(SHOPPER))
    assert second.payment == first.payment
    fetched = await payments.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=first.payment.payment_id),
        metadata=as_user(SHOPPER),
    )
    assert fetched.payment == first.payment
    assert count_rows(db_path, PAYMENT_ROWS) == 1


async def test_same_key_with_different_amount_is_key_reuse(
    payments: Stub, db_path: Path | str
) -> None:
    await payments.Charge(charge_request(amount=1299), metadata=as_user(SHOPPER))
    with pytest.raises(aio.AioRpcError) as raised:
        await payments.Charge(charge_request(amount=2499), metadata=as_user(SHOPPER))
    info = expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS)
    assert (info.reason, dict(info.metadata)) == (
        "IDEMPOTENCY_KEY_REUSED",
        {"idempotency_key": "key-1"},
    )
    assert count_rows(db_path, PAYMENT_ROWS) == 1


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [("tok_chargeDeclined", "generic_decline"), ("tok_insufficientFunds", "insufficient_funds")],
)
async def test_declined_card_is_failed_precondition_card_declined(
    payments: Stub, db_path: Path, token: str, decline_code: str
) -> None:
    for _attempt in range(2):  # the replay gives the same decline
        with pytest.raises(aio.AioRpcError) as raised:
            await payments.Charge(charge_request(token=token), metadata=as_user(SHOPPER))
        info = expect_error_info(raised.value, grpc.StatusCode.FAILED_PRECONDITION)
        assert (info.reason, dict(info.metadata)) == (
            "CARD_DECLINED",
            {"decline_code": decline_code},
        )
    assert count_rows(db_path, PAYMENT_ROWS) == 0


async def test_unset_charge_fields_are_each_reported(payments: Stub) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await payments.Charge(payments_pb2.ChargeRequest(), metadata=as_user(SHOPPER))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(raised.value)] == [
        "idempotency_key",
        "order_id",
        "amount",
        "payment_token",
    ]


async def test_bad_amount_and_unknown_token_are_invalid_argument(payments: Stub) -> None:
    request = payments_pb2.ChargeRequest(
        idempotency_key="key-1",
        order_id="ord_1",
        amount=money_pb2.Money(currency_code="dollars", minor_units=0),
        payment_token="tok_unknownCard",
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await payments.Charge(request, metadata=as_user(SHOPPER))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(raised.value)] == [
        "amount.currency_code",
        "amount.minor_units",
        "payment_token",
    ]


async def test_refunding_twice_refunds_once(payments: Stub) -> None:
    charged = await payments.Charge(charge_request(), metadata=as_user(SHOPPER))
    request = payments_pb2.RefundRequest(payment_id=charged.payment.payment_id)
    first = await payments.Refund(request)
    second = await payments.Refund(request)
    assert first.payment.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    assert second.payment == first.payment
    assert first.payment.create_time == charged.payment.create_time


@pytest.mark.parametrize("rpc", ["Refund", "GetPayment"])
async def test_unknown_payment_is_not_found(payments: Stub, rpc: str) -> None:
    request = (
        payments_pb2.RefundRequest(payment_id="pay_0000")
        if rpc == "Refund"
        else payments_pb2.GetPaymentRequest(payment_id="pay_0000")
    )
    with pytest.raises(aio.AioRpcError) as raised:
        await getattr(payments, rpc)(request, metadata=as_user(SHOPPER))
    info = expect_error_info(raised.value, grpc.StatusCode.NOT_FOUND)
    assert (info.reason, dict(info.metadata)) == ("PAYMENT_NOT_FOUND", {"payment_id": "pay_0000"})


async def test_empty_payment_id_is_invalid_argument(payments: Stub) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await payments.GetPayment(payments_pb2.GetPaymentRequest(), metadata=as_user(SHOPPER))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(raised.value)] == ["payment_id"]


async def test_payments_and_keys_survive_a_restart(
    services: ServiceRunner, channels: Channels, db_path: Path | str
) -> None:
    running = await services.start("payments", build)
    stub = payments_pb2_grpc.PaymentsServiceStub(channels(running.address))
    charged = await stub.Charge(charge_request(), metadata=as_user(SHOPPER))
    await services.stop(running)

    restarted = await services.start("payments", build)
    stub = payments_pb2_grpc.PaymentsServiceStub(channels(restarted.address))
    fetched = await stub.GetPayment(
        payments_pb2.GetPaymentRequest(payment_id=charged.payment.payment_id),
        metadata=as_user(SHOPPER),
    )
    assert fetched.payment == charged.payment
    replayed = await stub.Charge(charge_request(), metadata=as_user(SHOPPER))
    assert replayed.payment == charged.payment
    assert count_rows(db_path, PAYMENT_ROWS) == 1


async def test_get_payment_and_health_answer_while_a_charge_waits_for_the_database_lock(
    services: ServiceRunner, channels: Channels, db_path: Path, database_writes: WriteWatch
) -> None:
    running = await services.start("payments", build)
    channel = channels(running.address)
    stub = payments_pb2_grpc.PaymentsServiceStub(channel)
    first = await stub.Charge(charge_request("key-1"), metadata=as_user(SHOPPER))
    read = payments_pb2.GetPaymentRequest(payment_id=first.payment.payment_id)

    charged = await serves_while_a_write_waits(
        db_path=db_path,
        channel=channel,
        writes=database_writes,
        read=lambda: stub.GetPayment(read, metadata=as_user(SHOPPER)),
        write=lambda: stub.Charge(
            charge_request("key-2", order_id="ord_2"), metadata=as_user(SHOPPER)
        ),
    )

    assert charged.payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED
    assert count_rows(db_path, PAYMENT_ROWS) == 2
