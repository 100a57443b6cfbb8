"""Notifications domain: order events, the notifications made from them, and the publish/list
rules.

Listing and watching are made for a `caller` (the signed-in user) and answer only for the
caller's own notifications: a `user_id` naming someone else is PERMISSION_DENIED NOT_YOUR_DATA,
an empty one means the caller. Publishing is orders' call and needs no caller.

No grpc here: the servicer converts protos to these calls, and DomainErrors raised here become
status codes in the shared error-mapping interceptor. Times are UTC-aware datetimes.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol

from services.common.caller import own_user_id
from services.common.clock import to_micros, utc_now
from services.common.errors import AlreadyExists, FieldViolation, InvalidArgument, Validator
from services.common.money import Money, is_currency_code
from services.common.paging import Cursors

MAX_ID_LENGTH = 128
MAX_REASON_LENGTH = 500
MAX_BATCH_EVENTS = 500
# A resumed watch reads what it replays this many notifications at a time.
REPLAY_PAGE = 100
NOTIFICATION_ID_PREFIX = "ntf_"

# ListNotifications pages by the store's sequence number of the last notification served.
CURSORS = Cursors("ListNotifications", (int,))
# WatchNotifications resumes after the store's sequence number of the last notification sent.
WATCH_CURSORS = Cursors("WatchNotifications", (int,))

# ISO 4217 currencies whose minor unit is not a hundredth; every other one has two decimals.
_ZERO_DECIMALS = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF"
_THREE_DECIMALS = "BHD IQD JOD KWD LYD OMR TND"
_MINOR_DIGITS: Mapping[str, int] = {
    **dict.fromkeys(_ZERO_DECIMALS.split(), 0),
    **dict.fromkeys(_THREE_DECIMALS.split(), 3),
}

# What the orders service's rejection reasons mean to a shopper; other reasons are shown as is.
_REJECTION_REASONS: Mapping[str, str] = {
    "USER_NOT_FOUND": "we could not find your account",
    "PRODUCT_NOT_FOUND": "an item in it is no longer sold",
    "INSUFFICIENT_STOCK": "an item in it is out of stock",
    "CARD_DECLINED": "your card was declined",
}


class OrderEventType(Enum):
    """What happened to an order."""

    UNSPECIFIED = "UNSPECIFIED"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class InvalidTime:
    """A time the publisher sent that no datetime can hold (not a valid protobuf Timestamp),
    kept so that validation reports it together with every other bad field."""

    problem: str


@dataclass(frozen=True)
class OrderEvent:
    """An order event as published. Unvalidated until `validate_event` returns it: `total` is
    None when the publisher sent none, `occur_time` None when it was missing."""

    event_id: str
    order_id: str
    user_id: str
    type: OrderEventType
    reason: str
    total: Money | None
    occur_time: datetime | InvalidTime | None


@dataclass(frozen=True)
class Notification:
    """A message for a user about one order event (exactly one per event)."""

    notification_id: str
    user_id: str
    event_id: str
    order_id: str
    event_type: OrderEventType
    title: str
    body: str
    create_time: datetime


@dataclass(frozen=True)
class StoredNotification:
    """A notification as stored, with its `sequence`: its position among every notification
    of the database, increasing in commit order (the store says why), so "every notification
    after sequence N" is exact."""

    sequence: int
    notification: Notification

    @property
    def cursor(self) -> str:
        """The opaque WatchNotifications cursor that resumes right after this notification."""
        return watch_cursor(self.sequence)


@dataclass(frozen=True)
class Published:
    """The result of publishing an event: its notification, and whether the event had been
    published before (then the notification is the one created the first time)."""

    notification: Notification
    duplicate: bool


@dataclass(frozen=True)
class ListQuery:
    """A validated ListNotifications request. `before` is the cursor of the previous page: only
    notifications stored before it are listed (None for the first page)."""

    user_id: str
    page_size: int
    before: int | None


@dataclass(frozen=True)
class NotificationPage:
    """One page of a user's notifications, newest first. `next_cursor` is None on the last
    page."""

    notifications: tuple[Notification, ...]
    next_cursor: int | None

    @property
    def next_page_token(self) -> str:
        """The opaque token a client passes back for the next page ("" on the last page)."""
        return "" if self.next_cursor is None else CURSORS.token((self.next_cursor,))


class RecordOutcome(Enum):
    """What the store did with a `record` call (decided inside one transaction)."""

    CREATED = "created"
    # The event was recorded before with the same fingerprint; nothing was written.
    DUPLICATE = "duplicate"
    # The event id was recorded before with a different fingerprint; nothing was written.
    CONFLICT = "conflict"


@dataclass(frozen=True)
class NewEvent:
    """A validated event to record, its fingerprint, and the notification it gets if new."""

    event: OrderEvent
    fingerprint: str
    notification: Notification


class NotificationStore(Protocol):
    """Persistence the notifications domain needs (implemented by services.notifications.store)."""

    async def record_all(
        self, entries: Sequence[NewEvent]
    ) -> list[tuple[RecordOutcome, Notification]]:
        """Atomically, in order: store each entry whose event id is new with its fingerprint
        and notification, or nothing at all when an entry is a CONFLICT. Returns each entry's
        outcome and stored notification (the new one, or the one recorded the first time; an id
        given twice is recorded by its first entry), ending at the first CONFLICT if any."""
        ...

    async def list_for_user(self, query: ListQuery) -> NotificationPage:
        """One page of `query.user_id`'s notifications, newest first."""
        ...

    async def user_after(self, user_id: str, sequence: int, limit: int) -> list[StoredNotification]:
        """Up to `limit` of `user_id`'s notifications with a sequence above `sequence`,
        oldest first."""
        ...

    async def last_sequence(self) -> int:
        """The highest sequence stored (0 when there is none)."""
        ...


def _require_id(check: Validator, value: str, field_path: str) -> None:
    if check.require(bool(value.strip()), field_path, "must not be empty"):
        check.require(
            len(value) <= MAX_ID_LENGTH, field_path, f"must be at most {MAX_ID_LENGTH} characters"
        )


def _check_event(check: Validator, event: OrderEvent, path: str) -> bool:
    """Record every bad field of `event` at `path` (e.g. "event"); True if there was none."""
    found = len(check.violations)
    _require_id(check, event.event_id, f"{path}.event_id")
    _require_id(check, event.order_id, f"{path}.order_id")
    _require_id(check, event.user_id, f"{path}.user_id")
    check.require(
        event.type is not OrderEventType.UNSPECIFIED,
        f"{path}.type",
        "must be ORDER_EVENT_TYPE_CONFIRMED, _REJECTED or _CANCELLED",
    )
    check.require(
        len(event.reason) <= MAX_REASON_LENGTH,
        f"{path}.reason",
        f"must be at most {MAX_REASON_LENGTH} characters",
    )
    if event.total is not None:
        check.require(
            is_currency_code(event.total.currency_code),
            f"{path}.total.currency_code",
            "must be a three-letter upper-case ISO 4217 code such as USD",
        )
        check.require(
            event.total.minor_units >= 0, f"{path}.total.minor_units", "must not be negative"
        )
    if event.occur_time is None:
        check.violations.append(FieldViolation(f"{path}.occur_time", "is required"))
    elif isinstance(event.occur_time, InvalidTime):
        check.violations.append(FieldViolation(f"{path}.occur_time", event.occur_time.problem))
    return len(check.violations) == found


def validate_event(event: OrderEvent | None) -> OrderEvent:
    """Check a PublishOrderEvent request's event; raises InvalidArgument naming every bad field
    (paths relative to the request, e.g. "event.user_id")."""
    if event is None:
        raise InvalidArgument(
            "invalid PublishOrderEvent request",
            violations=[FieldViolation("event", "is required")],
        )
    check = Validator()
    _check_event(check, event, "event")
    check.raise_if_invalid("invalid PublishOrderEvent request")
    return event


def validate_events(events: Sequence[OrderEvent]) -> Sequence[OrderEvent]:
    """Check a PublishOrderEvents request's events; raises InvalidArgument naming every bad
    field of every event (e.g. "events[2].user_id"), with metadata "index" the first bad
    event, or none when the count itself is wrong."""
    message = "invalid PublishOrderEvents request"
    if not 1 <= len(events) <= MAX_BATCH_EVENTS:
        raise InvalidArgument(
            message,
            violations=[FieldViolation("events", f"must hold 1 to {MAX_BATCH_EVENTS} events")],
        )
    check = Validator()
    invalid = [
        n for n, event in enumerate(events) if not _check_event(check, event, f"events[{n}]")
    ]
    if invalid:
        raise InvalidArgument(
            message, metadata={"index": str(invalid[0])}, violations=check.violations
        )
    return events


def validate_watch(caller: str, user_id: str) -> str:
    """The user whose notifications a WatchNotifications request for `caller` follows (an empty
    user_id means the caller); PermissionDenied NOT_YOUR_DATA for someone else's, and
    InvalidArgument on field `user_id` for an id no user has."""
    watched = own_user_id(user_id, caller)
    check = Validator()
    _require_id(check, watched, "user_id")
    check.raise_if_invalid("invalid user id")
    return watched


def validate_list_query(user_id: str, page_size: int, page_token: str) -> ListQuery:
    """Check a ListNotifications request; raises InvalidArgument naming every bad field."""
    check = Validator()
    _require_id(check, user_id, "user_id")
    size, key = CURSORS.checked_page(check, page_size, page_token)
    check.raise_if_invalid("invalid ListNotifications request")
    before: int | None = None
    if key is not None:
        (sequence,) = key
        assert isinstance(sequence, int)  # CURSORS' shape; tells the type checker
        before = sequence
    return ListQuery(user_id=user_id, page_size=size, before=before)


def watch_cursor(sequence: int) -> str:
    """The opaque WatchNotifications cursor of a position (a store sequence; 0 is the start)."""
    return WATCH_CURSORS.token((sequence,))


def validate_resume_cursor(cursor: str) -> int | None:
    """The sequence a WatchNotifications `resume_cursor` resumes after (None for ""); raises
    InvalidArgument CURSOR_INVALID on field `resume_cursor` for one this service never
    issued."""
    try:
        key = WATCH_CURSORS.key(cursor)
    except InvalidArgument:
        raise invalid_cursor() from None
    if key is None:
        return None
    (sequence,) = key
    if not isinstance(sequence, int) or sequence < 0:
        raise invalid_cursor()
    return sequence


def invalid_cursor() -> InvalidArgument:
    """The refusal of a `resume_cursor` this service did not issue."""
    return InvalidArgument(
        "resume_cursor is not one WatchNotifications issued",
        reason="CURSOR_INVALID",
        violations=[
            FieldViolation("resume_cursor", "pass back the last cursor received, unchanged")
        ],
    )


def event_fingerprint(event: OrderEvent) -> str:
    """A digest of every field of a validated `event`: two publications of one event id are the
    same event exactly when their fingerprints are equal."""
    if not isinstance(event.occur_time, datetime):
        raise ValueError("only a validated event has a fingerprint")
    # Integer microseconds, as stored: fingerprints of events stored earlier stay valid.
    canonical = {
        "event_id": event.event_id,
        "order_id": event.order_id,
        "user_id": event.user_id,
        "type": event.type.value,
        "reason": event.reason,
        "total": None
        if event.total is None
        else [event.total.currency_code, event.total.minor_units],
        "occur_time_us": to_micros(event.occur_time),
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def format_money(amount: Money) -> str:
    """`amount` for people, e.g. "USD 12.99", "JPY 1200", "KWD 1.250"."""
    digits = _MINOR_DIGITS.get(amount.currency_code, 2)
    if digits == 0:
        return f"{amount.currency_code} {amount.minor_units}"
    whole, fraction = divmod(amount.minor_units, 10**digits)
    return f"{amount.currency_code} {whole}.{fraction:0{digits}d}"


def _sentence(text: str) -> str:
    return text.strip().rstrip(".")


def render(event: OrderEvent) -> tuple[str, str]:
    """The title and body of the notification for a validated `event`."""
    order = event.order_id
    if event.type is OrderEventType.CONFIRMED:
        body = f"Your order {order} is confirmed."
        if event.total is not None:
            body += f" Total: {format_money(event.total)}."
        return "Order confirmed", body
    if event.type is OrderEventType.REJECTED:
        reason = _sentence(_REJECTION_REASONS.get(event.reason, event.reason))
        body = f"We could not place your order {order}"
        return "Order rejected", body + (f": {reason}." if reason else ".")
    if event.type is OrderEventType.CANCELLED:
        reason = _sentence(event.reason)
        body = f"Your order {order} was cancelled" + (f": {reason}." if reason else ".")
        if event.total is not None and event.total.minor_units > 0:
            body += f" {format_money(event.total)} will be refunded to your card."
        return "Order cancelled", body
    raise ValueError(f"cannot render an event of type {event.type}")


def new_notification_id() -> str:
    """A fresh, unguessable notification id."""
    return NOTIFICATION_ID_PREFIX + uuid.uuid4().hex


def notification_for(
    event: OrderEvent, notification_id: str, create_time: datetime
) -> Notification:
    """The notification telling `event.user_id` about a validated `event`."""
    title, body = render(event)
    return Notification(
        notification_id=notification_id,
        user_id=event.user_id,
        event_id=event.event_id,
        order_id=event.order_id,
        event_type=event.type,
        title=title,
        body=body,
        create_time=create_time,
    )


class Notifications:
    """The notifications service's behaviour: record events once, notify, list."""

    def __init__(
        self,
        store: NotificationStore,
        deliver: Callable[[Notification], None],
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """`deliver` is called with each newly stored notification once its transaction has
        committed (the feed then hands it to live watchers); it must not block."""
        self._store = store
        self._deliver = deliver
        self._clock = clock

    async def publish(self, event: OrderEvent | None) -> Published:
        """Record `event` and its notification, delivering it to watchers if it is new.

        Raises InvalidArgument for a bad event, AlreadyExists IDEMPOTENCY_KEY_REUSED when its
        event id was recorded before with different content.
        """
        (published,) = await self._record([validate_event(event)], batch=False)
        return published

    async def publish_all(self, events: Sequence[OrderEvent]) -> list[Published]:
        """Record every one of `events` with its notification in one transaction, or none of
        them, delivering the new ones to watchers in order.

        Raises what `publish` raises for the first refused event, with its position in
        `events` as metadata "index" (see validate_events for a bad count).
        """
        return await self._record(validate_events(events), batch=True)

    async def _record(self, events: Sequence[OrderEvent], *, batch: bool) -> list[Published]:
        entries = [
            NewEvent(
                e, event_fingerprint(e), notification_for(e, new_notification_id(), self._clock())
            )
            for e in events
        ]
        outcomes = await self._store.record_all(entries)
        if outcomes and outcomes[-1][0] is RecordOutcome.CONFLICT:
            index = len(outcomes) - 1
            raise AlreadyExists(
                "event_id was already used for a different event",
                reason="IDEMPOTENCY_KEY_REUSED",
                metadata={"event_id": events[index].event_id}
                | ({"index": str(index)} if batch else {}),
            )
        # Delivered only after the commit, so a watcher never sees a notification that a crash
        # could still undo.
        for outcome, notification in outcomes:
            if outcome is RecordOutcome.CREATED:
                self._deliver(notification)
        return [
            Published(notification, duplicate=outcome is RecordOutcome.DUPLICATE)
            for outcome, notification in outcomes
        ]

    async def list(
        self, caller: str, user_id: str, page_size: int, page_token: str
    ) -> NotificationPage:
        """One page of the caller's notifications, newest first (an empty user_id means the
        caller); raises PermissionDenied NOT_YOUR_DATA for another user's, InvalidArgument for
        bad input."""
        query = validate_list_query(own_user_id(user_id, caller), page_size, page_token)
        return await self._store.list_for_user(query)

    async def resume_point(self, cursor: str) -> int | None:
        """The sequence a WatchNotifications `resume_cursor` resumes after (None for "");
        InvalidArgument CURSOR_INVALID for a cursor this service did not issue, including one
        later than anything stored (another database's: following it would skip
        notifications)."""
        sequence = validate_resume_cursor(cursor)
        if sequence is not None and sequence > await self._store.last_sequence():
            raise invalid_cursor()
        return sequence

    async def last_sequence(self) -> int:
        """The position of the last notification stored: where a watch without a cursor
        starts."""
        return await self._store.last_sequence()

    async def replay(self, user_id: str, after: int) -> AsyncIterator[StoredNotification]:
        """Every notification of `user_id` stored after sequence `after`, oldest first (read
        REPLAY_PAGE at a time, so a long absence does not load everything at once)."""
        while True:
            page = await self._store.user_after(user_id, after, REPLAY_PAGE)
            for stored in page:
                yield stored
            if len(page) < REPLAY_PAGE:
                return
            after = page[-1].sequence
