"""What payments keeps of a payment token, on a real server over its own database file: a keyed
fingerprint with the card's brand and last four digits, never the token itself, in any byte of
the file or its WAL; a database of an earlier release is scrubbed when the service starts; the
same idempotency key with another card is still refused."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import grpc
import pytest
from grpc import aio

from services.common.database import Database
from services.common.sql import Connection
from services.payments.app import build
from services.payments.domain import authorize
from services.payments.store import SCHEMA_V1
from shop.common.v1 import money_pb2
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from tests.support.databases import files_containing
from tests.support.errors import expect_error_info
from tests.support.services import ServiceRunner

Channels = Callable[[str], aio.Channel]
TOKENS = ("tok_visa", "tok_mastercard", "tok_chargeDeclined", "tok_insufficientFunds")
CARDS = {
    "tok_visa": ("visa", "4242"),
    "tok_mastercard": ("mastercard", "4444"),
    "tok_chargeDeclined": ("visa", "0002"),
    "tok_insufficientFunds": ("visa", "9995"),
}
V1_ATTEMPT = (
    "INSERT INTO charge_attempts (idempotency_key, order_id, currency_code, minor_units,"
    " payment_token, payment_id, decline_code, decline_message, create_time_us)"
    " VALUES (?, ?, 'USD', 1299, ?, ?, ?, ?, 0)"
)
DECLINED_ROWS = 300


def key_of(token: str) -> str:
    """An idempotency key for a charge with `token` (that does not contain the token)."""
    return f"key-{TOKENS.index(token)}"


def charge_request(key: str, token: str) -> payments_pb2.ChargeRequest:
    return payments_pb2.ChargeRequest(
        idempotency_key=key,
        order_id=f"ord_{key}",
        amount=money_pb2.Money(currency_code="USD", minor_units=1299),
        payment_token=token,
    )


async def charge_each_token(stub: payments_pb2_grpc.PaymentsServiceAsyncStub) -> None:
    for token in TOKENS:
        if authorize(token) is None:
            await stub.Charge(charge_request(key_of(token), token))
            continue
        with pytest.raises(aio.AioRpcError) as declined:
            await stub.Charge(charge_request(key_of(token), token))
        assert declined.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def cards(db_path: Path) -> dict[str, tuple[str, str, str]]:
    with closing(sqlite3.connect(db_path, timeout=5)) as db:
        rows = db.execute(
            "SELECT idempotency_key, card_fingerprint, card_brand, card_last4 FROM charge_attempts"
        )
        return {key: (fingerprint, brand, last4) for key, fingerprint, brand, last4 in rows}


async def test_no_payment_token_is_kept_in_any_byte_of_the_database(
    services: ServiceRunner, channels: Channels
) -> None:
    running = await services.start("payments", build)
    db_path = services.config("payments").db_path
    await charge_each_token(payments_pb2_grpc.PaymentsServiceStub(channels(running.address)))

    assert {token: files_containing(db_path, token.encode()) for token in TOKENS} == {
        token: [] for token in TOKENS
    }
    kept = cards(db_path)
    assert {key: card[1:] for key, card in kept.items()} == {
        key_of(token): card for token, card in CARDS.items()
    }
    # Keyed: 64 hex digits (HMAC-SHA256), one per token, none of them a plain hash of it.
    fingerprints = {card[0] for card in kept.values()}
    assert len(fingerprints) == len(TOKENS)
    assert all(len(fingerprint) == 64 for fingerprint in fingerprints)


async def test_the_fingerprint_key_is_private_and_kept_across_restarts(
    services: ServiceRunner, channels: Channels
) -> None:
    running = await services.start("payments", build)
    stub = payments_pb2_grpc.PaymentsServiceStub(channels(running.address))
    charged = await stub.Charge(charge_request("key-1", "tok_visa"))
    await services.stop(running)
    key_files = [p for p in services.data_dir.iterdir() if p.name.endswith(".key")]
    assert [stat.S_IMODE(p.stat().st_mode) for p in key_files] == [0o600]

    restarted = await services.start("payments", build)
    stub = payments_pb2_grpc.PaymentsServiceStub(channels(restarted.address))
    # The same card under the same key is the same charge: its fingerprint did not change.
    assert (await stub.Charge(charge_request("key-1", "tok_visa"))).payment == charged.payment
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.Charge(charge_request("key-1", "tok_mastercard"))
    info = expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS)
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_a_database_of_the_previous_release_is_scrubbed_of_its_tokens(
    services: ServiceRunner, channels: Channels
) -> None:
    db_path = services.config("payments").db_path
    previous = await Database.open(db_path, [SCHEMA_V1])

    def v1_rows(db: Connection) -> None:
        db.execute(
            "INSERT INTO payments VALUES ('pay_1', 'ord_key-a', 'USD', 1299, 'CAPTURED', 0, 0)"
        )
        db.execute(V1_ATTEMPT, ("key-a", "ord_key-a", "tok_visa", "pay_1", None, None))
        # Enough declines to fill pages of their own: freed pages keep their bytes unless the
        # migration overwrites them.
        for index in range(DECLINED_ROWS):
            db.execute(
                V1_ATTEMPT,
                (f"key-{index}", f"ord_{index}", "tok_chargeDeclined", None, "generic", "no"),
            )

    await previous.write(v1_rows)
    await previous.close()
    assert files_containing(db_path, b"tok_visa") == ["payments.db"]

    running = await services.start("payments", build)
    for token in ("tok_visa", "tok_chargeDeclined"):
        assert files_containing(db_path, token.encode()) == []
    kept = cards(db_path)
    assert kept["key-a"][1:] == ("visa", "4242")
    assert {card[1:] for key, card in kept.items() if key != "key-a"} == {("visa", "0002")}
    assert len(kept) == DECLINED_ROWS + 1

    stub = payments_pb2_grpc.PaymentsServiceStub(channels(running.address))
    replayed = await stub.Charge(charge_request("key-a", "tok_visa"))
    assert replayed.payment.payment_id == "pay_1"
    with pytest.raises(aio.AioRpcError) as raised:
        await stub.Charge(charge_request("key-a", "tok_mastercard"))
    assert expect_error_info(raised.value, grpc.StatusCode.ALREADY_EXISTS).reason == (
        "IDEMPOTENCY_KEY_REUSED"
    )
