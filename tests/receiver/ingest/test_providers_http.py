"""Every provider format through `/callbacks/{provider}` against Postgres: the corpus over HTTP,
duplicates, a summary then per-recipient reports, signed callbacks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from receiver.app import create_app
from receiver.config import ProviderSettings, Settings
from receiver.ingest.route import INGESTION
from tests.corpus import Case, load_cases

Client = TestClient[Any, Any]
CASES = load_cases()


async def send(client: Client, case: Case) -> Any:
    # The query goes in the path as it is: `params` would encode its `%` once more.
    path = f"/callbacks/{case.provider}" + (f"?{case.query}" if case.query else "")
    return await client.request(case.method, path, data=case.body or None, headers=case.headers)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_corpus_over_http_stored_once_then_duplicate(
    client: Client, db: asyncpg.Connection, case: Case
) -> None:
    first = await send(client, case)
    second = await send(client, case)

    if "error" in case.data:
        assert (first.status, second.status) == (202, 202)
        assert (
            await db.fetchval("SELECT count(*) FROM raw_callbacks WHERE outcome = 'unparsed'") == 2
        )
        return
    expected_ids = {event["id"] for event in case.data["expected"]}
    assert first.status == 200, await first.text()
    assert (await first.json())["events"] == len(expected_ids)
    assert (await second.json())["status"] == "duplicate"
    stored = await db.fetch("SELECT id, raw_id FROM events WHERE type LIKE 'message.%'")
    assert {row["id"] for row in stored} == expected_ids
    # A STOP among the corpus's replies also puts its handset on the opt-out list (Opt-outs).
    contacts = await db.fetchval("SELECT count(*) FROM events WHERE type LIKE 'contact.%'")
    inbound = [e for e in case.data["expected"] if e["type"] == "message.inbound"]
    assert contacts == sum(1 for e in inbound if (e["text"] or "").strip().upper() == "STOP")
    raws = await db.fetch("SELECT method, query, outcome FROM raw_callbacks ORDER BY received_at")
    assert [row["outcome"] for row in raws] == ["normalised", "duplicate"]
    assert raws[0]["method"] == case.method
    # As received; the test client may spell a character differently (`?` for `%3F`).
    assert parse_qsl(raws[0]["query"]) == parse_qsl(case.query)


async def test_apicontrol_summary_then_per_recipient_reports(
    client: Client, db: asyncpg.Connection
) -> None:
    report = {"messageID": 900, "ref": "r-900", "tstamp": "2024-06-03T10:05:22Z"}
    await client.post("/callbacks/apicontrol", json=report | {"statuses": {"sent": 2}})
    await client.post(
        "/callbacks/apicontrol",
        json=report | {"statuses": {"447700900001": "delivered"}, "tstamp": "2024-06-03T10:06:00Z"},
    )
    await client.post(
        "/callbacks/apicontrol",
        json=report | {"statuses": {"447700900002": "sent"}, "tstamp": "2024-06-03T10:05:30Z"},
    )
    await client.post(
        "/callbacks/apicontrol", json=report | {"statuses": {"delivered": 1, "expired": 1}}
    )

    summaries = await db.fetch(
        "SELECT status, counts FROM events WHERE type = 'message.summary' ORDER BY stored_at"
    )
    assert [(r["status"], json.loads(r["counts"])) for r in summaries] == [
        ("sent", {"sent": 2}),
        ("expired", {"delivered": 1, "expired": 1}),
    ]
    recipients = await db.fetch(
        "SELECT recipient, status FROM message_recipients ORDER BY recipient"
    )
    assert [tuple(r) for r in recipients] == [
        ("+447700900001", "delivered"),
        ("+447700900002", "sent"),
    ]


async def test_properties_same_receipt_by_get_then_post_is_one_event(
    client: Client, db: asyncpg.Connection
) -> None:
    fields = {
        "Action": "Webhook",
        "Event": "Message.DeliveryReceiptReceived",
        "Message.Sid": "M1",
        "Message.From": "+61499111222",
        "Message.To": "+61488023555",
        "Message.Text": "hi",
    }
    by_get = await client.get("/callbacks/properties", params=fields)
    by_post = await client.post("/callbacks/properties", data=fields)

    assert (by_get.status, by_post.status) == (200, 200)
    assert (await by_post.json())["status"] == "duplicate"
    assert await db.fetchval("SELECT count(*) FROM events") == 1


async def test_out_of_order_telecom23_reports_end_in_the_final_status(
    client: Client, db: asyncpg.Connection
) -> None:
    base = {"message_id": "api_7", "recipient": "+14155551234"}
    for status, stamp in [("DELIVRD", "10:30:04"), ("sent", "10:30:01"), ("pending", "10:30:00")]:
        response = await client.post(
            "/callbacks/telecom23",
            json=base | {"status": status, "timestamp": f"2026-02-13T{stamp}Z"},
        )
        assert response.status == 200

    rows = await db.fetch("SELECT status, sequence, recipient_status FROM events ORDER BY sequence")
    assert [tuple(r) for r in rows] == [
        ("delivered", 1, "delivered"),
        ("sent", 2, "delivered"),
        ("queued", 3, "delivered"),
    ]


async def test_signed_telecom23_callbacks(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        providers={"telecom23": ProviderSettings(signing_secret=SecretStr("whsec"))},
    )
    client = await aiohttp_client(create_app(settings, dsn))
    body = json.dumps({"message_id": "api_8", "status": "DELIVRD"}).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(b"whsec", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()

    good = await client.post(
        "/callbacks/telecom23",
        data=body,
        headers={"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": f"sha256={signature}"},
    )
    bad = await client.post(
        "/callbacks/telecom23",
        data=body,
        headers={"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": "sha256=00"},
    )

    assert (good.status, bad.status) == (200, 401)
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "normalised"
    await client.app[INGESTION].refusals.flush()
    assert await db.fetchval("SELECT reason FROM callback_refusals") == (
        "the provider's signature check failed"
    )


def signed_telecom23(body: bytes, stamp: str) -> dict[str, str]:
    signature = hmac.new(b"whsec", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": f"sha256={signature}"}


async def test_a_signed_telecom23_callback_sent_again_is_a_replay(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        providers={"telecom23": ProviderSettings(signing_secret=SecretStr("whsec"))},
    )
    client = await aiohttp_client(create_app(settings, dsn))
    body = json.dumps({"message_id": "api_replay", "status": "DELIVRD"}).encode()
    now = int(time.time())

    first = await client.post(
        "/callbacks/telecom23", data=body, headers=signed_telecom23(body, str(now))
    )
    again = await client.post(
        "/callbacks/telecom23", data=body, headers=signed_telecom23(body, str(now))
    )
    resigned = await client.post(
        "/callbacks/telecom23", data=body, headers=signed_telecom23(body, str(now + 1))
    )

    assert (first.status, again.status, resigned.status) == (200, 401, 200)
    assert (await again.json())["error"]["message"] == (
        "a replay of a signed callback already received"
    )
    assert await db.fetchval("SELECT count(*) FROM events") == 1  # the re-signed one: a duplicate


async def test_a_signed_telecom23_callback_takes_nothing_from_its_query(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        providers={"telecom23": ProviderSettings(signing_secret=SecretStr("whsec"))},
    )
    client = await aiohttp_client(create_app(settings, dsn))
    body = json.dumps({"message_id": "api_query", "status": "UNDELIV"}).encode()

    answer = await client.post(
        "/callbacks/telecom23?status=DELIVRD&message_id=someone_elses",
        data=body,
        headers=signed_telecom23(body, str(int(time.time()))),
    )

    assert answer.status == 200
    event = await db.fetchrow("SELECT provider_message_id, status FROM events")
    assert event is not None
    assert (event["provider_message_id"], event["status"]) == ("api_query", "undelivered")
