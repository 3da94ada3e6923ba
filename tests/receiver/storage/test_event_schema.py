"""The schema-v1 event is declared once (`EVENT_V1_FIELDS`): every other form of it, the
normaliser's JSON, the API's model, the stored columns and the row reader, agrees with it."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from normalizers.events import EVENT_V1_FIELDS, Event, EventType, Price, Status, event_id
from receiver.http.schemas import EventV1
from receiver.storage import callbacks
from receiver.storage.events import EVENT_COLUMNS, event_json
from tests.factories import a_raw_callback

NOW = datetime(2026, 11, 30, 12, 0, 0, 123000, tzinfo=UTC)


def a_full_event() -> Event:
    """Every optional field given, so that a field lost on the way shows."""
    return Event(
        id=event_id("carrierx", "schema", 1),
        type=EventType.STATUS,
        provider="carrierx",
        status=Status.UNDELIVERED,
        provider_status="failed",
        occurred_at=NOW,
        received_at=NOW,
        occurred_at_source="provider",
        provider_message_id="m-schema",
        provider_part_id="p-1",
        recipient="+15162065574",
        sender="+15162065575",
        error_code="30003",
        error_message="Unreachable destination handset",
        client_ref="ref-1",
        segments=2,
        price=Price(amount="0.0075", currency="USD"),
        text="hello",
        counts={"delivered": 1},
        failure_kind="permanent",
        synthetic=False,
    )


def test_the_normalisers_json_lists_the_declared_fields_in_order() -> None:
    assert tuple(a_full_event().to_json()) == EVENT_V1_FIELDS


def test_the_api_model_lists_the_declared_fields_in_order() -> None:
    assert tuple(EventV1.model_fields) == EVENT_V1_FIELDS


async def test_a_stored_event_reads_back_as_it_was_normalised(db: asyncpg.Connection) -> None:
    event = a_full_event()
    raw = a_raw_callback(remote_addr="127.0.0.1", received_at=NOW)
    await callbacks.ingest_callback(db, raw, outcome="normalised", error=None, events=[event])

    row = await db.fetchrow(f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = $1", event.id)
    assert row is not None
    stored = event_json(row)

    assert tuple(stored) == EVENT_V1_FIELDS
    EventV1.model_validate(stored)  # the API's model takes what storage gives
    filled_by_storage = {"raw_id", "message_id", "sequence", "recipient_status", "tenant"}
    normalised = event.to_json()
    assert {k: v for k, v in stored.items() if k not in filled_by_storage} == {
        k: v for k, v in normalised.items() if k not in filled_by_storage
    }
    assert stored["raw_id"] == str(raw.id)
    assert stored["sequence"] == 1
