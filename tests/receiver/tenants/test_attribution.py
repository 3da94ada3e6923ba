"""Whose an event is: a report's, its message's tenant (learnt from the recipient row the state
machine updates anyway); a reply's, the owner of the number it was sent to, else the tenant that
most recently sent from that number to that handset within REPLY_WINDOW_DAYS, else nobody's; a
report that outran its send answer becomes its tenant's when the message adopts it, and reaches
that tenant's subscriptions then."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from normalizers.events import Event, EventType, Status, event_id
from receiver.storage import callbacks
from receiver.storage.tenants import add_number, create_tenant
from tests.factories import a_raw_callback, attach_orphans, insert_message

OURS = "+447700900990"  # a number the tenants send from
HANDSET = "+447700900018"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def reply(to: str = OURS, handset: str = HANDSET, at: datetime = NOW) -> Event:
    return Event(
        id=event_id("swift", "mo", to, handset, at.isoformat()),
        type=EventType.INBOUND,
        provider="swift",
        status=Status.RECEIVED,
        provider_status="received",
        occurred_at=at,
        received_at=at,
        occurred_at_source="provider",
        provider_message_id=f"mo-{uuid.uuid4()}",
        recipient=to,
        sender=handset,
        text="YES",
    )


def report(pmid: str, recipient: str, status: Status = Status.DELIVERED) -> Event:
    return Event(
        id=event_id("swift", pmid, recipient, str(status)),
        type=EventType.STATUS,
        provider="swift",
        status=status,
        provider_status=str(status),
        occurred_at=NOW,
        received_at=NOW,
        occurred_at_source="provider",
        provider_message_id=pmid,
        recipient=recipient,
    )


async def store(db: asyncpg.Connection, event: Event) -> str | None:
    await callbacks.ingest_callback(
        db, a_raw_callback("swift"), outcome="normalised", error=None, events=[event]
    )
    tenant: str | None = await db.fetchval("SELECT tenant FROM events WHERE id = $1", event.id)
    return tenant


async def sent_by(db: asyncpg.Connection, tenant: str, ago: timedelta, handset: str) -> None:
    """A message of `tenant` from OURS to `handset`, sent `ago` before NOW."""
    message_id = uuid.uuid4()
    await insert_message(db, message_id, "swift", sender=OURS, tenant=tenant)
    await db.execute("UPDATE messages SET created_at = $2 WHERE id = $1", message_id, NOW - ago)
    await db.execute(
        "INSERT INTO message_recipients (message_id, provider, provider_message_id, recipient,"
        " status, tenant) VALUES ($1, 'swift', $2, $3, 'delivered', $4)",
        message_id,
        f"sw-{message_id}",
        handset,
        tenant,
    )


async def test_a_reply_to_a_number_a_tenant_owns_is_that_tenants(db: asyncpg.Connection) -> None:
    for name in ("alpha", "beta"):
        await create_tenant(db, name)
    await add_number(db, "alpha", OURS)
    await sent_by(db, "beta", timedelta(hours=1), HANDSET)  # beta sent from it more recently

    assert await store(db, reply()) == "alpha"


async def test_else_the_tenant_that_last_sent_from_that_number_to_that_handset(
    db: asyncpg.Connection,
) -> None:
    for name in ("alpha", "beta"):
        await create_tenant(db, name)
    await sent_by(db, "alpha", timedelta(days=3), HANDSET)
    await sent_by(db, "beta", timedelta(days=1), HANDSET)
    await sent_by(db, "alpha", timedelta(hours=1), "+447700900099")  # another handset

    assert await store(db, reply()) == "beta"


async def test_else_nobodys_past_the_reply_window_or_without_a_send(
    db: asyncpg.Connection,
) -> None:
    await create_tenant(db, "alpha")
    await sent_by(db, "alpha", timedelta(days=3), HANDSET)
    await db.execute("SET smsr.reply_window_days = 2")  # REPLY_WINDOW_DAYS, as the pool sets it

    try:
        too_late = await store(db, reply())
        to_another_number = await store(db, reply(to="+447700900777"))
        await db.execute("SET smsr.reply_window_days = 4")
        within = await store(db, reply(at=NOW + timedelta(seconds=1)))
    finally:
        await db.execute("RESET smsr.reply_window_days")

    assert too_late is None
    assert to_another_number is None
    assert within == "alpha"


async def test_a_report_is_its_messages_tenants_and_an_orphan_nobodys_until_adopted(
    db: asyncpg.Connection,
) -> None:
    await create_tenant(db, "alpha")
    await db.execute(
        "INSERT INTO subscriptions (id, url, secret, tenant) VALUES"
        " ($1, 'http://127.0.0.1:9/a', 's', 'alpha'), ($2, 'http://127.0.0.1:9/o', 's', NULL),"
        " ($3, 'http://127.0.0.1:9/d', 's', 'default')",
        *(uuid.uuid4() for _ in range(3)),
    )
    await sent_by(db, "alpha", timedelta(minutes=1), HANDSET)
    pmid = await db.fetchval("SELECT provider_message_id FROM message_recipients")
    ours = report(pmid, HANDSET)
    orphan = report("sw-not-yet-known", "+447700900031", Status.SENT)

    assert await store(db, ours) == "alpha"
    assert await store(db, orphan) is None

    async def receivers(event: Event) -> set[str | None]:
        rows = await db.fetch(
            "SELECT s.tenant FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
            " WHERE d.event_id = $1",
            event.id,
        )
        return {row["tenant"] for row in rows}

    assert await receivers(ours) == {"alpha", None}  # its tenant's and the operator's
    assert await receivers(orphan) == {None}  # the operator's alone, for now

    message_id = uuid.uuid4()
    await insert_message(db, message_id, "swift", tenant="alpha")
    await attach_orphans(db, message_id, "swift", "sw-not-yet-known", "+447700900031")

    adopted = await db.fetchval("SELECT tenant FROM events WHERE id = $1", orphan.id)
    assert adopted == "alpha"
    assert await receivers(orphan) == {"alpha", None}  # queued for alpha when adopted


async def test_a_summary_is_the_tenants_of_its_recipients(db: asyncpg.Connection) -> None:
    await create_tenant(db, "alpha")
    await sent_by(db, "alpha", timedelta(minutes=1), HANDSET)
    pmid = await db.fetchval("SELECT provider_message_id FROM message_recipients")

    def summary(provider_message_id: str) -> Event:
        return Event(
            id=event_id("swift", "summary", provider_message_id),
            type=EventType.SUMMARY,
            provider="swift",
            status=Status.SENT,
            provider_status="sent",
            occurred_at=NOW,
            received_at=NOW,
            occurred_at_source="provider",
            provider_message_id=provider_message_id,
            counts={"sent": 1},
        )

    assert await store(db, summary(pmid)) == "alpha"
    assert await store(db, summary("nothing")) is None
