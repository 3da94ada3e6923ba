"""GET /v1/messages: one message with its recipients and timeline, by provider id, and the list
with keyset pagination and filters."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.storage import messages
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]


@pytest.fixture
async def hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    return await sandbox_hub(aiohttp_client, dsn)


async def test_one_message_with_recipients_and_timeline(
    hub: Client, db: asyncpg.Connection
) -> None:
    sent = await hub.post(
        "/v1/messages",
        json={
            "provider": "carrierx",
            "to": ["+447700900001", "+447700900002"],
            "from": "+447700900999",
            "body": "Hello",
            "ref": "order-1",
        },
    )
    message_id = (await sent.json())["id"]

    view: dict[str, Any] = {}
    for _ in range(100):
        view = await (await hub.get(f"/v1/messages/{message_id}")).json()
        if {r["status"] for r in view["recipients"]} == {"delivered", "undelivered"}:
            break
        await asyncio.sleep(0.05)

    assert (view["id"], view["provider"], view["ref"], view["segments"]) == (
        message_id,
        "carrierx",
        "order-1",
        1,
    )
    by_number = {r["to"]: r for r in view["recipients"]}
    assert by_number["+447700900001"]["status"] == "delivered"
    assert by_number["+447700900001"]["final"] is True
    assert by_number["+447700900001"]["provider_message_id"].startswith("cx-")
    assert by_number["+447700900001"]["price"] == {"amount": "0.0025", "currency": "USD"}
    first = [e for e in view["events"] if e["recipient"] == "+447700900001"]
    assert [e["status"] for e in first] == ["queued", "sent", "delivered"]
    assert [e["sequence"] for e in first] == [1, 2, 3]
    assert {e["message_id"] for e in view["events"]} == {message_id}


async def test_unknown_messages_are_404(hub: Client) -> None:
    assert (await hub.get(f"/v1/messages/{uuid.uuid4()}")).status == 404
    assert (await hub.get("/v1/messages/not-a-uuid")).status == 404


async def test_by_provider_id_finds_the_message_or_its_orphan_reports(
    hub: Client, db: asyncpg.Connection
) -> None:
    sent = await (
        await hub.post(
            "/v1/messages",
            json={
                "provider": "swift",
                "to": ["+447700900007"],
                "from": "+447700900999",
                "body": "x",
            },
        )
    ).json()
    pmid = sent["recipients"][0]["provider_message_id"]
    await hub.post(
        "/callbacks/carrierx",
        json={"message_sid": "orphan-1", "status": "sent", "to": "15162065574"},
    )

    found = await (await hub.get(f"/v1/messages/by-provider-id/swift/{pmid}")).json()
    orphan = await (await hub.get("/v1/messages/by-provider-id/carrierx/orphan-1")).json()
    missing = await hub.get("/v1/messages/by-provider-id/carrierx/never-seen")

    assert found["id"] == sent["id"]
    assert orphan["orphan"] is True
    assert [e["status"] for e in orphan["events"]] == ["sent"]
    assert missing.status == 404


async def make_messages(db: asyncpg.Connection, count: int) -> list[uuid.UUID]:
    ids = []
    for n in range(count):
        message_id = uuid.uuid4()
        await messages.create_message(
            db,
            message_id,
            "swift" if n % 2 else "carrierx",
            [f"+4477009000{n:02d}"],
            tenant="default",
            sender="+447700900999",
            body="b",
            client_ref=f"ref-{n % 3}",
            segments=1,
            encoding="GSM-7",
            request={},
            send_at=None,
            expires_at=None,
            idempotency_key=None,
            deadline=datetime.now(UTC) + timedelta(days=3),
        )
        ids.append(message_id)
    return ids


async def test_the_list_pages_newest_first_without_gaps_or_repeats(
    hub: Client, db: asyncpg.Connection
) -> None:
    ids = await make_messages(db, 7)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        page = await (await hub.get("/v1/messages", params=params)).json()
        seen.extend(m["id"] for m in page["data"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == 3
    assert seen == [str(i) for i in reversed(ids)]
    exact = await (await hub.get("/v1/messages", params={"limit": "7"})).json()
    assert exact["next_cursor"] is None  # a full last page says so


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"provider": "swift"}, {1, 3, 5}),
        ({"ref": "ref-0"}, {0, 3, 6}),
        ({"to": "+447700900004"}, {4}),
        ({"status": "unknown"}, {0, 1, 2, 3, 4, 5, 6}),
        ({"status": "delivered"}, set()),
    ],
)
async def test_the_list_filters(
    hub: Client, db: asyncpg.Connection, params: dict[str, str], expected: set[int]
) -> None:
    ids = await make_messages(db, 7)

    page = await (await hub.get("/v1/messages", params=params)).json()

    assert {ids.index(uuid.UUID(m["id"])) for m in page["data"]} == expected


async def test_since_and_until(hub: Client, db: asyncpg.Connection) -> None:
    await make_messages(db, 2)
    stamp = await db.fetchval("SELECT max(created_at) FROM messages")

    later = await (await hub.get("/v1/messages", params={"since": stamp.isoformat()})).json()
    earlier = await (await hub.get("/v1/messages", params={"until": stamp.isoformat()})).json()

    assert len(later["data"]) >= 1
    assert len(later["data"]) + len(earlier["data"]) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "!!!"},
        {"status": "teleported"},
        {"limit": "many"},
        {"since": "yesterday"},
        {"ref": "a\u0000"},
    ],
)
async def test_bad_list_parameters_are_400(hub: Client, params: dict[str, str]) -> None:
    response = await hub.get("/v1/messages", params=params)

    assert response.status == 400
    assert "error" in await response.json()
