"""Multipart messages: a recipient is delivered only when every known part is, and any part's
failure is the recipient's; per-part events stay in the timeline."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from normalizers.events import Event, EventType, Status, event_id
from receiver.storage import callbacks
from tests.factories import a_raw_callback

Client = TestClient[Any, Any]
MESSAGE = "01JDQ02MQ543RTQBT08WY88589"  # seed 003's send answer: message id and its parts
PARTS = ["01JDQ02H94HEWKPK0VMJPY9N3H", "01JDQ02H94HEWKPK0VMJPY9N3J"]


def swift_dlr(part: str, word: str, report: str) -> dict[str, Any]:
    return {
        "delivery_status": word,
        "from": "12003004000",
        "id": report,
        "sms": {"id": part},
        "timestamp": "2024-06-14T00:00:00.000000Z",
        "to": "12003004001",
        "type": "sms_dlr",
    }


async def register(db: asyncpg.Connection) -> int:
    row_id: int = await db.fetchval(
        "SELECT register_parts('swift', $1, '+12003004001', $2)", MESSAGE, PARTS
    )
    return row_id


async def test_a_recipient_is_delivered_only_when_every_part_is(
    client: Client, db: asyncpg.Connection
) -> None:
    await register(db)

    first = await client.post("/callbacks/swift", json=swift_dlr(PARTS[0], "delivered", "R1"))
    assert first.status == 200
    after_first = await db.fetchrow("SELECT status, segments FROM message_recipients")
    assert after_first is not None
    assert (after_first["status"], after_first["segments"]) == ("accepted", 2)

    await client.post("/callbacks/swift", json=swift_dlr(PARTS[1], "delivered", "R2"))

    assert await db.fetchval("SELECT status FROM message_recipients") == "delivered"
    timeline = await db.fetch(
        "SELECT provider_message_id, provider_part_id, recipient_status, sequence"
        " FROM events ORDER BY sequence"
    )
    assert [tuple(row) for row in timeline] == [
        (MESSAGE, PARTS[0], "accepted", 1),
        (MESSAGE, PARTS[1], "delivered", 2),
    ]


async def test_any_failed_part_fails_the_recipient_with_its_status(
    client: Client, db: asyncpg.Connection
) -> None:
    await register(db)

    await client.post("/callbacks/swift", json=swift_dlr(PARTS[1], "UNDELIV", "R2"))
    await client.post("/callbacks/swift", json=swift_dlr(PARTS[0], "delivered", "R1"))

    recipient = await db.fetchrow("SELECT status, final FROM message_recipients")
    assert recipient is not None
    assert (recipient["status"], recipient["final"]) == ("undelivered", True)
    parts = await db.fetch("SELECT part_id, status FROM recipient_parts ORDER BY part_id")
    assert [tuple(row) for row in parts] == [(PARTS[0], "delivered"), (PARTS[1], "undelivered")]


def part_event(part: str, status: Status, segments: int | None) -> Event:
    moment = datetime(2024, 6, 14, tzinfo=UTC)
    return Event(
        id=event_id("test", part, status),
        type=EventType.STATUS,
        provider="test",
        status=status,
        provider_status=str(status),
        occurred_at=moment,
        received_at=moment,
        occurred_at_source="provider",
        provider_message_id="m-1",
        provider_part_id=part,
        recipient="+447700900001",
        segments=segments,
    )


async def ingest(db: asyncpg.Connection, event: Event) -> callbacks.IngestResult:
    raw = a_raw_callback("test", received_at=event.received_at)
    return await callbacks.ingest_callback(
        db, raw, outcome="normalised", error=None, events=[event]
    )


async def test_parts_named_by_the_report_and_a_known_segment_count(db: asyncpg.Connection) -> None:
    first = await ingest(db, part_event("p1", Status.DELIVERED, segments=3))
    second = await ingest(db, part_event("p2", Status.DELIVERED, segments=3))
    third = await ingest(db, part_event("p3", Status.DELIVERED, segments=3))

    # Two of three parts delivered is not a delivered message: handed over, part 3 unheard of.
    assert [r.new_events[0].recipient_status for r in (first, second, third)] == [
        "sent",
        "sent",
        "delivered",
    ]


async def test_a_late_part_report_never_takes_the_recipient_back(db: asyncpg.Connection) -> None:
    await ingest(db, part_event("p1", Status.DELIVERED, segments=1))
    late = await ingest(db, part_event("p1", Status.SENT, segments=1))

    assert late.new_events[0].recipient_status == "delivered"
    assert await db.fetchval("SELECT status FROM recipient_parts") == "delivered"


async def test_status_rank_of_nothing_is_the_lowest(db: asyncpg.Connection) -> None:
    assert await db.fetchval("SELECT status_rank(NULL)") == 0
