"""`reprocess`: unparsed raw callbacks normalised again once the normaliser learns them."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from normalizers.base import CallbackRequest
from normalizers.carrierx import CarrierX
from normalizers.events import Event
from normalizers.registry import DEFAULT_REGISTRY
from receiver.ingest.reprocess import reprocess
from tests.factories import with_override

Client = TestClient[Any, Any]

# A format the shipped normaliser does not know: CarrierX fields wrapped in an envelope.
ENVELOPE = {
    "sms": {
        "message_sid": "env-1",
        "status": "delivered",
        "to": "15162065574",
        "from": "15162065575",
        "date_status_changed": "2023-12-06T15:18:33.512Z",
    }
}


class EnvelopeAwareCarrierX(CarrierX):
    """The normaliser 'after the fix': it unwraps the envelope first (and, the fix being
    imperfect, lets through any segment count an envelope states)."""

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        data = json.loads(request.body)
        inner = CallbackRequest(
            method=request.method, path=request.path, body=json.dumps(data["sms"]).encode()
        )
        events = super().parse_callback(inner, received_at)
        if "segments" in data:
            events = [dataclasses.replace(e, segments=data["segments"]) for e in events]
        return events


FIXED = with_override(DEFAULT_REGISTRY, EnvelopeAwareCarrierX())


async def post_envelope(client: Client) -> None:
    response = await client.post("/callbacks/carrierx", json=ENVELOPE)
    assert response.status == 202


async def test_reprocess_normalises_what_the_fixed_normaliser_now_reads(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_envelope(client)
    raw_before = await db.fetchrow("SELECT id, received_at FROM raw_callbacks")
    assert raw_before is not None

    report = await reprocess(db, FIXED)

    assert (report.examined, report.normalised, report.new_events) == (1, 1, 1)
    raw = await db.fetchrow("SELECT outcome, event_count FROM raw_callbacks")
    assert raw is not None
    assert (raw["outcome"], raw["event_count"]) == ("normalised", 1)
    event = await db.fetchrow("SELECT status, raw_id, received_at, sequence FROM events")
    assert event is not None
    assert event["status"] == "delivered"
    assert event["raw_id"] == raw_before["id"]
    assert event["received_at"] == raw_before["received_at"]  # when it really arrived
    assert event["sequence"] == 1
    assert await db.fetchval("SELECT status FROM message_recipients") == "delivered"


async def test_a_dry_run_says_what_would_change_and_writes_nothing(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_envelope(client)
    lines: list[str] = []

    report = await reprocess(db, FIXED, dry_run=True, emit=lines.append)

    assert report.normalised == 1
    assert len(lines) == 1
    assert "would normalise into 1 events (1 new)" in lines[0]
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "unparsed"
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_what_still_cannot_be_read_stays_unparsed_and_is_reported(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_envelope(client)

    report = await reprocess(db, DEFAULT_REGISTRY)

    assert (report.examined, report.still_unparsed, report.normalised) == (1, 1, 0)
    assert "still unparsed" in report.lines[0]
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "unparsed"


@pytest.mark.parametrize("provider", ["carrierx", "apicontrol"])
async def test_provider_filter(client: Client, db: asyncpg.Connection, provider: str) -> None:
    await post_envelope(client)

    report = await reprocess(db, FIXED, provider=provider)

    assert report.examined == (1 if provider == "carrierx" else 0)


async def test_reprocess_walks_every_batch(client: Client, db: asyncpg.Connection) -> None:
    for _ in range(5):
        await client.post("/callbacks/carrierx", data=b"garbage with no format")

    report = await reprocess(db, DEFAULT_REGISTRY, batch_size=2)

    assert report.examined == 5


async def test_a_row_the_database_refuses_stays_unparsed_and_others_go_through(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_envelope(client)
    too_big = {"sms": dict(ENVELOPE["sms"], message_sid="env-2"), "segments": 10**12}
    response = await client.post("/callbacks/carrierx", json=too_big)
    assert response.status == 202

    report = await reprocess(db, FIXED)

    assert (report.examined, report.normalised, report.still_unparsed) == (2, 1, 1)
    assert any("storage error" in line for line in report.lines)
    outcomes = await db.fetch("SELECT outcome, count(*) FROM raw_callbacks GROUP BY outcome")
    assert {row["outcome"]: row["count"] for row in outcomes} == {"normalised": 1, "unparsed": 1}


async def test_one_callback_is_reprocessed_through_the_api(
    client: Client, aiohttp_client: Any, settings: Any, dsn: str, db: asyncpg.Connection
) -> None:
    from receiver.app import create_app

    await post_envelope(client)
    raw_id = await db.fetchval("SELECT id FROM raw_callbacks")
    fixed = await aiohttp_client(create_app(settings, dsn, FIXED))  # the hub after the fix

    done = await fixed.post(f"/v1/raw-callbacks/{raw_id}/reprocess")
    again = await fixed.post(f"/v1/raw-callbacks/{raw_id}/reprocess")

    assert done.status == 200
    body = await done.json()
    assert (body["outcome"], body["new_events"]) == ("normalised", 1)
    assert "normalised into 1 events" in body["result"]
    assert again.status == 404  # nothing unparsed left under that id
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "normalised"
