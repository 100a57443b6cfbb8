"""gRPC handlers of shop.payments.v1.PaymentsService: proto in, domain call, proto out.

Errors are not handled here: DomainErrors raised by the domain become status codes with rich
details in the shared ErrorMappingInterceptor. Charge and Refund are orders' calls and need no
caller (Charge records the one it names as the payment's owner); GetPayment answers only a
signed-in caller, about their own payment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpc import aio

from services.common.caller import caller_of, require_caller
from services.common.convert import money_from_proto, money_to_proto, to_timestamp
from services.payments.domain import Payment, Payments, PaymentStatus
from shop.payments.v1 import payments_pb2, payments_pb2_grpc

_STATUSES: Mapping[PaymentStatus, payments_pb2.PaymentStatus.ValueType] = {
    PaymentStatus.CAPTURED: payments_pb2.PAYMENT_STATUS_CAPTURED,
    PaymentStatus.REFUNDED: payments_pb2.PAYMENT_STATUS_REFUNDED,
}


def payment_to_proto(payment: Payment) -> payments_pb2.Payment:
    """The wire form of a domain Payment."""
    return payments_pb2.Payment(
        payment_id=payment.payment_id,
        order_id=payment.order_id,
        amount=money_to_proto(payment.amount),
        status=_STATUSES[payment.status],
        create_time=to_timestamp(payment.create_time),
        update_time=to_timestamp(payment.update_time),
    )


class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
    """PaymentsService backed by the payments domain."""

    def __init__(self, payments: Payments) -> None:
        self._payments = payments

    async def Charge(
        self, request: payments_pb2.ChargeRequest, context: aio.ServicerContext[Any, Any]
    ) -> payments_pb2.ChargeResponse:
        """See payments.proto."""
        payment = await self._payments.charge(
            request.idempotency_key,
            request.order_id,
            money_from_proto(request.amount) if request.HasField("amount") else None,
            request.payment_token,
            caller_of(context),
        )
        return payments_pb2.ChargeResponse(payment=payment_to_proto(payment))

    async def Refund(
        self, request: payments_pb2.RefundRequest, context: aio.ServicerContext[Any, Any]
    ) -> payments_pb2.RefundResponse:
        """See payments.proto."""
        payment = await self._payments.refund(request.payment_id)
        return payments_pb2.RefundResponse(payment=payment_to_proto(payment))

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: aio.ServicerContext[Any, Any]
    ) -> payments_pb2.GetPaymentResponse:
        """See payments.proto."""
        payment = await self._payments.get(require_caller(context), request.payment_id)
        return payments_pb2.GetPaymentResponse(payment=payment_to_proto(payment))
