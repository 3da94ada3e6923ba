"""The callback pipeline end to end: HTTP in, rows in a real Postgres out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import pytest
import structlog.testing
from aiohttp.test_utils import TestClient

from normalizers.base import CallbackRequest
from normalizers.carrierx import CarrierX
from normalizers.events import STATUS_RANK, Event
from normalizers.registry import DEFAULT_REGISTRY
from receiver.app import create_app
from receiver.config import Settings
from receiver.context import AppContext
from receiver.ingest.route import INGESTION
from receiver.storage import callbacks
from tests.corpus import FIXTURES as CORPUS
from tests.factories import a_raw_callback, attach_orphans, insert_message, with_override

FIXTURES = CORPUS / "carrierx"
Client = TestClient[Any, Any]


def fixture(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())["request"]["body"]
    return data | changes


async def post_json(client: Client, payload: object) -> tuple[int, dict[str, Any]]:
    response = await client.post("/callbacks/carrierx", json=payload)
    return response.status, await response.json()


async def test_a_delivery_report_is_stored_raw_and_normalised(
    client: Client, db: asyncpg.Connection
) -> None:
    payload = fixture("outbound_delivered.json")
    status, answer = await post_json(client, payload)

    assert status == 200
    assert answer["status"] == "normalised"
    assert answer["events"] == 1
    raw = await db.fetchrow(
        "SELECT * FROM raw_callbacks WHERE id = $1", uuid.UUID(answer["raw_id"])
    )
    assert raw is not None
    assert raw["outcome"] == "normalised"
    assert raw["method"] == "POST"
    assert raw["path"] == "/callbacks/carrierx"
    assert json.loads(bytes(raw["body"])) == payload
    assert raw["event_count"] == 1
    event = await db.fetchrow("SELECT * FROM events")
    assert event is not None
    assert event["status"] == "delivered"
    assert event["final"] is True
    assert event["recipient"] == "+15162065574"
    assert event["provider_message_id"] == "097b49df-c54e-4eaf-97d0-89cf7d5a655b"
    assert event["raw_id"] == raw["id"]
    assert event["sequence"] == 1
    assert event["recipient_status"] == "delivered"
    assert event["message_id"] is None  # no message sent through us yet: an orphan
    assert json.loads(event["price"]) == {"amount": "0.0025", "currency": "USD"}
    recipient = await db.fetchrow("SELECT * FROM message_recipients")
    assert recipient is not None
    assert (recipient["status"], recipient["final"], recipient["sequence"]) == (
        "delivered",
        True,
        1,
    )


async def test_the_same_callback_twice_gives_one_event_and_a_duplicate_raw_row(
    client: Client, db: asyncpg.Connection
) -> None:
    payload = fixture("outbound_delivered.json")
    first_status, _ = await post_json(client, payload)
    second_status, second = await post_json(client, payload)

    assert (first_status, second_status) == (200, 200)
    assert (second["status"], second["events"], second["duplicates"]) == ("duplicate", 0, 1)
    assert await db.fetchval("SELECT count(*) FROM events") == 1
    outcomes = await db.fetch("SELECT outcome FROM raw_callbacks ORDER BY received_at")
    assert [row["outcome"] for row in outcomes] == ["normalised", "duplicate"]
    assert await db.fetchval("SELECT sequence FROM message_recipients") == 1


async def test_a_late_sent_after_delivered_leaves_delivered_with_both_in_history(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_json(client, fixture("outbound_delivered.json"))
    status, _ = await post_json(
        client,
        fixture(
            "outbound_delivered.json", status="sent", date_status_changed="2023-12-06T15:18:31Z"
        ),
    )

    assert status == 200
    history = await db.fetch(
        "SELECT status, sequence, recipient_status FROM events ORDER BY sequence"
    )
    assert [tuple(row) for row in history] == [
        ("delivered", 1, "delivered"),
        ("sent", 2, "delivered"),
    ]
    assert await db.fetchval("SELECT status FROM message_recipients") == "delivered"


async def test_unknown_never_overwrites_a_known_status(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_json(client, fixture("outbound_delivered.json", status="sent"))
    await post_json(client, fixture("outbound_delivered.json", status="carrier_hold"))

    assert await db.fetchval("SELECT status FROM message_recipients") == "sent"
    assert await db.fetchval("SELECT count(*) FROM events") == 2


async def test_concurrent_out_of_order_reports_end_in_the_final_status(
    client: Client, db: asyncpg.Connection
) -> None:
    words = ["delivered", "sent", "queued", "sending", "sent", "queued", "carrier_hold"]
    payloads = [
        fixture(
            "outbound_delivered.json", status=word, date_status_changed=f"2023-12-06T15:18:3{i}Z"
        )
        for i, word in enumerate(words)
    ]
    results = await asyncio.gather(*(post_json(client, p) for p in payloads))

    assert {status for status, _ in results} == {200}
    recipient = await db.fetchrow("SELECT status, sequence FROM message_recipients")
    assert recipient is not None
    assert (recipient["status"], recipient["sequence"]) == ("delivered", len(words))
    sequences = await db.fetch("SELECT sequence FROM events ORDER BY sequence")
    assert [row["sequence"] for row in sequences] == list(range(1, len(words) + 1))


async def test_garbage_is_kept_as_unparsed_with_its_error_and_answered_202(
    client: Client, db: asyncpg.Connection
) -> None:
    response = await client.post(
        "/callbacks/carrierx",
        data=b"\x00\x01 definitely not a report",
        headers={"Content-Type": "text/plain"},
    )
    answer = await response.json()

    assert response.status == 202
    assert answer["status"] == "unparsed"
    raw = await db.fetchrow("SELECT outcome, error, body FROM raw_callbacks")
    assert raw is not None
    assert raw["outcome"] == "unparsed"
    assert raw["error"]
    assert bytes(raw["body"]) == b"\x00\x01 definitely not a report"
    assert await db.fetchval("SELECT count(*) FROM events") == 0


class CrashingCarrierX(CarrierX):
    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        raise RuntimeError("a bug in the normaliser")


@pytest.mark.parametrize("registry", [with_override(DEFAULT_REGISTRY, CrashingCarrierX())])
async def test_a_crashing_normaliser_loses_nothing_and_answers_202(
    client: Client, db: asyncpg.Connection
) -> None:
    status, answer = await post_json(client, fixture("outbound_delivered.json"))

    assert status == 202
    assert "a bug in the normaliser" in answer["error"]
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "unparsed"


class RefusingCarrierX(CarrierX):
    def verify_callback(self, request: CallbackRequest, secret: str | None, now: datetime) -> bool:
        return False


@pytest.mark.parametrize("registry", [with_override(DEFAULT_REGISTRY, RefusingCarrierX())])
async def test_a_callback_failing_authentication_is_answered_401_and_not_stored(
    client: Client, db: asyncpg.Connection
) -> None:
    status, answer = await post_json(client, fixture("outbound_delivered.json"))

    assert status == 401
    assert answer["error"]["code"] == "unauthorized"
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    await client.app[INGESTION].refusals.flush()
    assert await db.fetchval("SELECT count(*) FROM callback_refusals") == 1


async def test_a_get_callback_with_a_query_string_is_normalised(
    client: Client, db: asyncpg.Connection
) -> None:
    response = await client.get(
        "/callbacks/carrierx",
        params={"message_sid": "q-1", "status": "delivered", "to": "15162065574"},
    )

    assert response.status == 200
    raw = await db.fetchrow("SELECT method, query FROM raw_callbacks")
    assert raw is not None
    assert raw["method"] == "GET"
    assert "message_sid=q-1" in raw["query"]
    assert await db.fetchval("SELECT status FROM events") == "delivered"


async def test_an_oversized_body_is_refused_with_413_and_nothing_stored(
    client: Client, db: asyncpg.Connection
) -> None:
    big = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = await client.post("/callbacks/carrierx", data=big)
    answer = await response.json()

    assert response.status == 413
    assert answer["error"]["code"] == "payload_too_large"
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 0


async def test_an_oversized_chunked_body_is_refused_with_413(client: Client) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b"x" * (64 * 1024)

    response = await client.post("/callbacks/carrierx", data=chunks())

    assert response.status == 413


async def test_an_unknown_provider_is_404_with_a_json_error(client: Client) -> None:
    response = await client.post("/callbacks/nobody", json={})

    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"


async def test_a_wrong_method_is_405_with_a_json_error(client: Client) -> None:
    response = await client.put("/callbacks/carrierx", json={})

    assert response.status == 405
    assert "error" in await response.json()


async def test_an_orphan_is_attached_when_its_message_appears(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_json(client, fixture("outbound_delivered.json", status="sent"))
    message_id = uuid.uuid4()
    await insert_message(db, message_id, "carrierx", sender="+15162065575", body="hi")

    row_id = await attach_orphans(
        db, message_id, "carrierx", "097b49df-c54e-4eaf-97d0-89cf7d5a655b", "+15162065574"
    )
    await post_json(client, fixture("outbound_delivered.json"))

    assert await db.fetchval("SELECT count(*) FROM message_recipients") == 1
    assert (
        await db.fetchval("SELECT message_id FROM message_recipients WHERE id = $1", row_id)
        == message_id
    )
    events = await db.fetch("SELECT status, message_id, sequence FROM events ORDER BY sequence")
    assert [(r["status"], r["message_id"], r["sequence"]) for r in events] == [
        ("sent", message_id, 1),
        ("delivered", message_id, 2),
    ]


async def test_inbound_messages_have_no_recipient_state(
    client: Client, db: asyncpg.Connection
) -> None:
    status, answer = await post_json(client, fixture("inbound_sms.json"))

    assert (status, answer["events"]) == (200, 1)
    event = await db.fetchrow("SELECT type, status, text, sequence, recipient_id FROM events")
    assert event is not None
    assert tuple(event) == ("message.inbound", "received", "Yes, see you at 5", 1, None)
    assert await db.fetchval("SELECT count(*) FROM message_recipients") == 0


async def test_sql_status_rank_mirrors_the_python_table(db: asyncpg.Connection) -> None:
    for status, rank in STATUS_RANK.items():
        assert await db.fetchval("SELECT status_rank($1)", str(status)) == rank


async def test_replaying_a_stored_raw_callback_changes_nothing(db: asyncpg.Connection) -> None:
    raw = a_raw_callback(received_at=datetime.fromisoformat("2023-12-06T15:30:00+00:00"))
    first = await callbacks.ingest_callback(db, raw, outcome="unparsed", error="x", events=[])
    again = await callbacks.ingest_callback(db, raw, outcome="unparsed", error="x", events=[])

    assert (first.outcome, again.outcome) == ("unparsed", "unparsed")
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 1


async def test_nul_characters_and_encoded_query_bytes_are_stored_not_500(
    client: Client, db: asyncpg.Connection
) -> None:
    inbound = fixture("inbound_sms.json", message="a\u0000b")
    status, _ = await post_json(client, inbound)
    response = await client.get("/callbacks/carrierx?message_sid=n%00ul&status=sent&note=a%26b")

    assert status == 200
    assert response.status == 200
    assert await db.fetchval("SELECT text FROM events WHERE type = 'message.inbound'") == "ab"
    query = await db.fetchval("SELECT query FROM raw_callbacks WHERE method = 'GET'")
    assert query == "message_sid=n%00ul&status=sent&note=a%26b"  # as it came, undecoded


class OverflowingCarrierX(CarrierX):
    """A normaliser bug: it lets through a segment count no Postgres integer holds."""

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        return [
            dataclasses.replace(event, segments=10**12)
            for event in super().parse_callback(request, received_at)
        ]


@pytest.mark.parametrize("registry", [with_override(DEFAULT_REGISTRY, OverflowingCarrierX())])
async def test_events_the_database_refuses_leave_the_raw_callback_unparsed(
    client: Client, db: asyncpg.Connection
) -> None:
    status, answer = await post_json(client, fixture("outbound_delivered.json"))

    assert status == 202
    assert answer["error"].startswith("storage error")
    raw = await db.fetchrow("SELECT outcome, error FROM raw_callbacks")
    assert raw is not None
    assert raw["outcome"] == "unparsed"
    assert "out of range" in raw["error"]
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_a_second_different_final_report_is_kept_and_logged(
    client: Client, db: asyncpg.Connection
) -> None:
    await post_json(client, fixture("outbound_delivered.json"))
    with structlog.testing.capture_logs() as logs:
        await post_json(
            client,
            fixture(
                "outbound_delivered.json",
                status="failed",
                date_status_changed="2023-12-06T16:00:00Z",
            ),
        )

    conflicts = [entry for entry in logs if entry["event"] == "conflicting_final_report"]
    assert [(c["reported"], c["kept"]) for c in conflicts] == [("failed", "delivered")]
    assert await db.fetchval("SELECT status FROM message_recipients") == "delivered"
    assert await db.fetchval("SELECT count(*) FROM events") == 2


async def test_no_credential_is_kept_at_rest(client: Client, db: asyncpg.Connection) -> None:
    secrets = {
        "Authorization": "Bearer provider-credential-1",
        "X-Telecom-Signature": "sig-value-2",
        "Cookie": "session=cookie-value-3",
        "X-Api-Key": "api-key-value-4",
    }
    answer = await client.post(
        "/callbacks/carrierx",
        json={"message_sid": "rest-1", "status": "delivered"},
        headers=secrets | {"X-Request-Tag": "kept-as-is"},
    )
    assert answer.status in (200, 202)

    headers = dict(json.loads(await db.fetchval("SELECT headers FROM raw_callbacks")))
    for name, value in secrets.items():
        assert headers[name].startswith("sha256:"), name  # there, but not usable
        assert value not in headers[name]
    assert headers["X-Request-Tag"] == "kept-as-is"
    raw = await db.fetchval("SELECT headers::text FROM raw_callbacks")
    assert not any(value in raw for value in secrets.values())


async def test_api_readers_cannot_starve_the_storing_of_callbacks(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = Settings(
        database_url=dsn, db_pool_min_size=0, db_pool_max_size=2, db_acquire_timeout_s=0.5
    )
    client: Client = await aiohttp_client(create_app(settings, dsn))
    api_pool = client.app[AppContext.KEY].db.pool
    held = [await api_pool.acquire() for _ in range(2)]  # every API connection is busy
    try:
        reading = await client.get("/v1/messages")
        stored = await client.post(
            "/callbacks/carrierx", json={"message_sid": "starved-1", "status": "delivered"}
        )
    finally:
        for connection in held:
            await api_pool.release(connection)

    assert reading.status == 503  # the reader waits its turn
    assert stored.status == 200  # the provider does not
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 1
