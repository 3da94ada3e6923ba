"""Opt-outs by keyword against the simulated providers: a STOP reply suppresses the handset for
the number it wrote to (STOPALL: the whole tenant), the next send to it is `rejected` with
`opted_out` and no provider call (the simulated provider's own count), START lifts it, longer
text is not a keyword, and subscribers that ask get contact.opted_out / contact.opted_in."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from normalizers.events import Event, EventType, Status, event_id
from receiver.context import AppContext
from receiver.sandbox.common import SANDBOX_KEY, Sandbox
from receiver.sending.redelivery import Redeliveries
from receiver.sending.scheduler import Scheduler
from receiver.storage.callbacks import store_events_alone
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]

HANDSET = "+447700900011"
OURS = "+447700900990"
OTHER_OURS = "+447700900991"


def taken(hub: Client) -> int:
    sandbox: Sandbox = hub.app[SANDBOX_KEY]
    return sum(n for (_, number), n in sandbox.sent.items() if "+" + number == HANDSET)


async def send(hub: Client, sender: str = OURS, **fields: Any) -> dict[str, Any]:
    body = {"provider": "swift", "to": [HANDSET], "from": sender, "body": "hi"} | fields
    answer = await hub.post("/v1/messages", json=body)
    sent: dict[str, Any] = await answer.json()
    assert answer.status == 201, sent
    recipient: dict[str, Any] = sent["recipients"][0]
    return recipient


async def reply(db: asyncpg.Connection, text: str, ours: str = OURS) -> None:
    now = datetime.now(UTC)
    inbound = Event(
        id=event_id("swift", "test-reply", text, ours, uuid.uuid4()),
        type=EventType.INBOUND,
        provider="swift",
        status=Status.RECEIVED,
        provider_status="received",
        occurred_at=now,
        received_at=now,
        occurred_at_source="received",
        sender=HANDSET,
        recipient=ours,
        text=text,
    )
    await store_events_alone(db, [inbound])


async def test_stop_suppresses_the_handset_for_that_number_and_start_lifts_it(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await send(hub)  # the reply is the tenant's: it answers this send
    before = taken(hub)

    await reply(db, "  Stop! ")
    refused = await send(hub)
    from_other = await send(hub, OTHER_OURS)

    assert (refused["status"], refused["failure_kind"], refused["error_code"]) == (
        "rejected",
        "permanent",
        "opted_out",
    )
    assert from_other["status"] != "rejected"
    assert taken(hub) == before + 1  # only the other number's send reached the provider
    listed = (await (await hub.get("/v1/opt-outs")).json())["data"]
    assert [(e["number"], e["sender"], e["source"], e["tenant"]) for e in listed] == [
        (HANDSET, OURS, "keyword", "default")
    ]

    await reply(db, "start")
    again = await send(hub)

    assert again["status"] != "rejected"
    assert (await (await hub.get("/v1/opt-outs")).json())["data"] == []
    kinds = await db.fetch(
        "SELECT type, tenant, recipient, sender, details FROM events"
        " WHERE type LIKE 'contact.%' ORDER BY stored_at"
    )
    assert [(k["type"], k["tenant"], k["recipient"], k["sender"]) for k in kinds] == [
        ("contact.opted_out", "default", OURS, HANDSET),
        ("contact.opted_in", "default", OURS, HANDSET),
    ]
    assert json.loads(kinds[0]["details"])["source"] == "keyword"


async def test_a_keyword_inside_longer_text_is_not_a_keyword(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await send(hub)

    await reply(db, "don't stop")
    await reply(db, "STOP sending me the wrong time")

    assert (await send(hub))["status"] != "rejected"
    assert await db.fetchval("SELECT count(*) FROM opt_outs") == 0


async def test_stopall_reaches_every_number_of_the_tenant(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await send(hub)

    await reply(db, "STOPALL")

    assert (await send(hub))["error_code"] == "opted_out"
    assert (await send(hub, OTHER_OURS))["error_code"] == "opted_out"
    assert (await send(hub, "MyShop"))["error_code"] == "opted_out"


async def test_a_reply_of_nobodys_still_suppresses_the_number_it_went_to(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await db.execute("INSERT INTO tenants (name) VALUES ('shop')")

    await reply(db, "STOP")  # no tenant sent to this handset: nobody's reply

    assert await db.fetchval("SELECT tenant FROM opt_outs") is None
    assert (await send(hub, tenant="shop"))["error_code"] == "opted_out"
    assert (await send(hub, OTHER_OURS, tenant="shop"))["status"] != "rejected"


async def test_one_tenants_stop_leaves_another_tenants_sends_alone(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await db.execute("INSERT INTO tenants (name) VALUES ('shop')")
    await send(hub)  # default's: the reply is default's

    await reply(db, "STOPALL")

    assert (await send(hub))["error_code"] == "opted_out"
    assert (await send(hub, OTHER_OURS, tenant="shop"))["status"] != "rejected"


async def test_an_entry_added_through_the_api_refuses_the_send_and_is_removed(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    made = await hub.post("/v1/opt-outs", json={"number": HANDSET})
    entry = await made.json()
    assert made.status == 201, entry
    assert (entry["source"], entry["sender"]) == ("api", None)

    assert (await send(hub))["error_code"] == "opted_out"
    assert taken(hub) == 0
    assert (await hub.delete(f"/v1/opt-outs/{entry['id']}")).status == 204
    assert (await send(hub))["status"] != "rejected"
    bad = await hub.post("/v1/opt-outs", json={"number": "12"})
    assert bad.status == 422


async def test_help_is_answered_through_the_provider_it_came_from_when_the_tenant_says_what(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    scheduler = Scheduler(hub.app[AppContext.KEY])
    await send(hub)
    before = taken(hub)

    await reply(db, "help")  # the tenant has no answer: none is sent
    assert await scheduler.tick_answers() == 0
    changed = await hub.patch("/v1/tenants/default", json={"help_reply": "Shop: call 0800"})
    assert changed.status == 200, await changed.text()
    await reply(db, "INFO.")
    assert await scheduler.tick_answers() == 1

    assert taken(hub) == before + 1
    answer = await db.fetchrow(
        "SELECT m.provider, m.sender, m.body, m.tenant, r.recipient FROM messages m"
        " JOIN message_recipients r ON r.message_id = m.id WHERE m.client_ref LIKE 'help:%'"
    )
    assert answer is not None
    assert tuple(answer) == ("swift", OURS, "Shop: call 0800", "default", HANDSET)
    assert await db.fetchval("SELECT count(*) FROM help_replies") == 0


async def test_the_console_lists_adds_and_marks_opted_out_recipients(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await hub.post("/v1/opt-outs", json={"number": HANDSET, "sender": OURS})
    answer = await hub.post(
        "/v1/messages", json={"provider": "swift", "to": [HANDSET], "from": OURS, "body": "hi"}
    )
    message_id = (await answer.json())["id"]

    listed = await (await hub.get("/console/opt-outs")).text()
    searched = await (await hub.get("/console/opt-outs?number=%2B447700900012")).text()
    shown = await (await hub.get(f"/console/messages/{message_id}")).text()

    assert f'<th scope="row">{HANDSET}</th>' in listed
    assert OURS in listed
    assert "No one on the list for +447700900012" in searched
    assert "opted out: not sent" in shown


async def test_a_held_message_is_checked_again_when_it_is_sent(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await send(hub)  # the reply below is the tenant's
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    held = await hub.post(
        "/v1/messages",
        json={
            "provider": "swift",  # cannot schedule: the hub holds it
            "to": [HANDSET],
            "from": OURS,
            "body": "later",
            "send_at": later,
        },
    )
    message_id = (await held.json())["id"]
    assert held.status == 201
    before = taken(hub)
    await reply(db, "STOP")  # after it was accepted, before it is sent
    await db.execute("UPDATE messages SET dispatch_at = now() WHERE id = $1", uuid.UUID(message_id))

    assert await Scheduler(hub.app[AppContext.KEY]).tick() == 1

    view = await (await hub.get(f"/v1/messages/{message_id}")).json()
    assert view["recipients"][0]["status"] == "rejected"
    assert taken(hub) == before


async def test_a_redelivery_is_checked_again_when_it_is_sent(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    route = {
        "name": "uk",
        "providers": ["swift", "carrierx"],
        "redeliver": {"on": ["undelivered"], "within_s": 600, "max_attempts": 2},
    }
    assert (await hub.post("/v1/routes", json=route)).status == 201
    silent = "+447700900017"  # swift never reports numbers ending in 7: the test does
    answer = await hub.post("/v1/messages", json={"to": [silent], "from": OURS, "body": "hi"})
    sent = await answer.json()
    swift_id = sent["recipients"][0]["provider_message_id"]
    now = datetime.now(UTC)
    undelivered = Event(
        id=event_id("swift", "test-undelivered", swift_id),
        type=EventType.STATUS,
        provider="swift",
        status=Status.UNDELIVERED,
        provider_status="undelivered",
        occurred_at=now,
        received_at=now,
        occurred_at_source="received",
        provider_message_id=swift_id,
        recipient=silent,
        failure_kind="temporary",
    )
    await store_events_alone(db, [undelivered])
    made = await hub.post("/v1/opt-outs", json={"number": silent})
    assert made.status == 201

    assert await Redeliveries(hub.app[AppContext.KEY]).tick() == 1

    view = await (await hub.get(f"/v1/messages/{sent['id']}")).json()
    [recipient] = view["recipients"]
    assert (recipient["provider"], recipient["attempt"]) == ("carrierx", 2)
    assert (recipient["status"], recipient["failure_kind"]) == ("rejected", "permanent")
    sandbox: Sandbox = hub.app[SANDBOX_KEY]
    assert sandbox.sent[("carrierx", silent.lstrip("+"))] == 0
