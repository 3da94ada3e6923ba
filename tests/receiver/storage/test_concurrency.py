"""Races in storage: callbacks sharing recipients and events never deadlock, and an orphan
attached while a report is being stored is not missed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from normalizers.events import Event, EventType, Status, event_id
from receiver.storage import callbacks
from tests.factories import a_raw_callback, attach_orphans, insert_message

MOMENT = datetime(2024, 6, 14, tzinfo=UTC)


def status_event(pmid: str, recipient: str, status: Status, tag: str = "") -> Event:
    return Event(
        id=event_id("race", pmid, recipient, status, tag),
        type=EventType.STATUS,
        provider="race",
        status=status,
        provider_status=str(status),
        occurred_at=MOMENT,
        received_at=MOMENT,
        occurred_at_source="provider",
        provider_message_id=pmid,
        recipient=recipient,
    )


def raw() -> callbacks.RawCallback:
    return a_raw_callback("race", received_at=MOMENT)


async def ingest(connection: asyncpg.Connection, events: list[Event]) -> callbacks.IngestResult:
    return await callbacks.ingest_callback(
        connection, raw(), outcome="normalised", error=None, events=events
    )


async def test_callbacks_sharing_events_and_recipients_never_deadlock(
    dsn: str, db: asyncpg.Connection
) -> None:
    first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        for round_ in range(60):
            pmid = f"m{round_}"
            e1 = status_event(pmid, "+1", Status.SENT)
            e2 = status_event(pmid, "+1", Status.DELIVERED)
            e3 = status_event(pmid, "+2", Status.DELIVERED)
            # Opposite orders, overlapping events and recipients: the shape that deadlocked.
            await asyncio.gather(ingest(first, [e1, e2, e3]), ingest(second, [e3, e2]))
    finally:
        await first.close()
        await second.close()

    assert await db.fetchval("SELECT count(*) FROM events") == 60 * 3
    sequences = await db.fetch(
        "SELECT recipient_id, array_agg(sequence ORDER BY sequence) AS s FROM events"
        " GROUP BY recipient_id"
    )
    assert all(list(row["s"]) == list(range(1, len(row["s"]) + 1)) for row in sequences)


async def test_an_orphan_stored_while_attach_waits_is_attached(
    dsn: str, db: asyncpg.Connection
) -> None:
    message_id = uuid.uuid4()
    await insert_message(db, message_id, "race")
    writer = await asyncpg.connect(dsn)
    try:
        transaction = writer.transaction()
        await transaction.start()
        await ingest(writer, [status_event("m-late", "+1", Status.SENT)])  # holds the row lock
        attaching = asyncio.create_task(attach_orphans(db, message_id, "race", "m-late", "+1"))
        await asyncio.sleep(0.3)
        assert not attaching.done()  # waiting for the writer's lock
        await transaction.commit()
        await attaching
    finally:
        await writer.close()

    assert await db.fetchval("SELECT message_id FROM events") == message_id


async def test_a_recipient_of_another_message_is_never_moved(db: asyncpg.Connection) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    for message_id in (first, second):
        await insert_message(db, message_id, "race")
    await attach_orphans(db, first, "race", "m-1", "+1")

    with pytest.raises(asyncpg.UniqueViolationError):
        await attach_orphans(db, second, "race", "m-1", "+1")
    assert await db.fetchval("SELECT message_id FROM message_recipients") == first
