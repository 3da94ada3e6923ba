"""Reports that contradict their message are flagged, not hidden: an apicontrol summary whose
counts do not add up or say more delivered than the recipients can be, and a report about a
recipient the message never had; in the API, the timeline, the console and the metrics."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from tests.factories import attach_orphans, insert_message
from tests.receiver.delivery.test_delivery import Client

PMID = "555001"
RECIPIENTS = {"447700900001": "delivered", "447700900002": "delivered", "447700900003": "failed"}


async def apicontrol(hub: Client, body: dict[str, Any]) -> None:
    answer = await hub.post(
        "/callbacks/apicontrol",
        json={"tstamp": "2026-11-30T10:05:22Z", "message_type": "sms", "messageID": int(PMID)}
        | body,
    )
    assert answer.status == 200, await answer.text()


async def a_message_of_three(hub: Client, db: asyncpg.Connection) -> uuid.UUID:
    message_id = uuid.uuid4()
    await insert_message(db, message_id, "apicontrol", provider_message_id=PMID)
    for number, word in RECIPIENTS.items():
        await apicontrol(hub, {"statuses": {number: word}, "callback_type": "per_recipient_final"})
    for number in RECIPIENTS:  # the send's answer, arriving after its reports
        await attach_orphans(db, message_id, "apicontrol", PMID, "+" + number)
    return message_id


async def test_a_summary_that_agrees_is_not_flagged(hub: Client, db: asyncpg.Connection) -> None:
    message_id = await a_message_of_three(hub, db)
    await apicontrol(hub, {"statuses": {"delivered": 2, "failed": 1}, "callback_type": "summary"})

    view = await (await hub.get(f"/v1/messages/{message_id}")).json()
    assert view["discrepancies"] == []


async def test_contradictions_are_flagged_once_and_told(
    hub: Client, db: asyncpg.Connection
) -> None:
    message_id = await a_message_of_three(hub, db)
    summary = {"statuses": {"delivered": 3, "failed": 1}, "callback_type": "summary"}
    await apicontrol(hub, summary)
    await apicontrol(hub, summary)  # the provider's retry: no second flag
    await apicontrol(
        hub, {"statuses": {"447700900009": "delivered"}, "callback_type": "per_recipient_final"}
    )

    view = await (await hub.get(f"/v1/messages/{message_id}")).json()
    found = {d["kind"]: d["details"] for d in view["discrepancies"]}
    assert found == {
        "summary_counts": {"counts": {"delivered": 3, "failed": 1}, "recipients": 3},
        "summary_delivered": {
            "summary_delivered": 3,
            "recipients_delivered": 2,
            "recipients_open": 0,
        },
        "unknown_recipient": {"provider_message_id": PMID},
    }
    told = [e for e in view["events"] if e["type"] == "message.discrepancy"]
    assert sorted(e["details"]["kind"] for e in told) == sorted(found)
    assert {e["id"] for e in told} == {d["event_id"] for d in view["discrepancies"]}
    unknown = next(e for e in told if e["details"]["kind"] == "unknown_recipient")
    assert unknown["recipient"] == "+447700900009"
    assert all(e["tenant"] == "default" for e in told)

    page = await (await hub.get(f"/console/messages/{message_id}")).text()
    assert "Reports that contradict this message" in page
    assert "unknown recipient" in page
    metrics = await (await hub.get("/metrics")).text()
    assert 'smsr_message_discrepancies{kind="summary_counts",provider="apicontrol"} 1.0' in metrics


async def test_a_subscriber_asking_for_discrepancies_gets_them(
    hub: Client, db: asyncpg.Connection
) -> None:
    answer = await hub.post(
        "/v1/subscriptions",
        json={
            "url": "http://127.0.0.1:9/hook",
            "filters": {"event_types": ["message.discrepancy"]},
        },
    )
    assert answer.status == 201, await answer.text()
    everything = await hub.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/all"})
    assert everything.status == 201
    await a_message_of_three(hub, db)
    await apicontrol(hub, {"statuses": {"delivered": 4}, "callback_type": "summary"})

    rows = await db.fetch(
        "SELECT s.url, e.type FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
        " JOIN events e ON e.id = d.event_id ORDER BY s.url, e.type"
    )
    queued = {(row["url"], row["type"]) for row in rows}
    assert ("http://127.0.0.1:9/hook", "message.discrepancy") in queued
    assert {t for url, t in queued if url.endswith("/hook")} == {"message.discrepancy"}
    assert "message.discrepancy" not in {t for url, t in queued if url.endswith("/all")}
