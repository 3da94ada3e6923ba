"""Events the hub makes itself (`synthetic: true`): a silent recipient expired, a held message
cancelled, expired or not sendable at its send time. Stored through the same state machine as
reports, with no raw callback, and re-emitted like them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from normalizers.events import Event, EventType, FailureKind, Status, event_id
from receiver.storage.callbacks import store_events_alone
from receiver.storage.pool import Connection


def hub_event(
    recipient: asyncpg.Record,
    status: Status,
    word: str,
    message: str,
    *,
    occurred_at: datetime,
    received_at: datetime,
    failure_kind: FailureKind | None,
) -> Event:
    """An event the hub makes itself (synthetic) for a recipient row: `word` is its
    provider_status and part of its id, so the same one is made once."""
    provider: str = recipient["provider"]
    number: str = recipient["recipient"]
    return Event(
        id=event_id(provider, word, recipient["provider_message_id"], number),
        type=EventType.STATUS,
        provider=provider,
        status=status,
        provider_status=word,
        error_message=message,
        occurred_at=occurred_at,
        received_at=received_at,
        occurred_at_source="received",
        provider_message_id=recipient["provider_message_id"],
        recipient=number or None,
        failure_kind=failure_kind,
        synthetic=True,
    )


async def end_recipients(
    connection: Connection,
    recipients: Sequence[asyncpg.Record],
    status: Status,
    word: str,
    now: datetime,
    detail: str | None = None,
) -> None:
    """The hub's own final event for each of these recipients (cancelled, expired, failed)."""
    if not recipients:
        return
    message = {
        "expired_before_sending": "expires_at passed before the send time came",
        "cancelled": "cancelled before it was sent",
        "not_sendable": f"could not be sent at its send time: {detail}",
    }.get(word, word)
    events = [
        hub_event(
            recipient,
            status,
            word,
            message[:2000],
            occurred_at=now,
            received_at=now,
            failure_kind="temporary" if status is Status.FAILED else None,
        )
        for recipient in recipients
    ]
    await store_events_alone(connection, events)
