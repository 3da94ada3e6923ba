"""Silence ends: a recipient with no final report by its deadline gets a synthetic `expired`
(stored, in its timeline, re-emitted); a real final report arriving later takes over; several
sweeps share the work without doing any twice."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from normalizers.base import SendRequest
from receiver.config import ProviderSettings, Settings
from receiver.context import AppContext
from receiver.sending import silence
from receiver.sending.silence import SilenceSweep
from receiver.storage.notify import Signal
from receiver.storage.pool import open_database
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]
SILENT = "+447700900007"  # the simulated providers never report a number ending in 7


@pytest.fixture
async def hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    return await sandbox_hub(aiohttp_client, dsn)  # the tests drive the sweep


async def send_silent(hub: Client, provider: str = "carrierx") -> dict[str, Any]:
    answer = await hub.post(
        "/v1/messages",
        json={"provider": provider, "to": [SILENT], "from": "+447700900999", "body": "hi"},
    )
    assert answer.status == 201
    sent: dict[str, Any] = await answer.json()
    return sent


async def overdue(db: asyncpg.Connection, message_id: str) -> None:
    """The deadline passed (instead of waiting for it)."""
    await db.execute(
        "UPDATE message_recipients SET deadline = now() - interval '1 second'"
        " WHERE message_id = $1",
        uuid.UUID(message_id),
    )


def latest(view: dict[str, Any]) -> dict[str, Any]:
    """The event stored last (the timeline is in the order things happened)."""
    event: dict[str, Any] = max(view["events"], key=lambda event: event["sequence"])
    return event


def sweep_of(hub: Client) -> SilenceSweep:
    context = hub.app[AppContext.KEY]
    return SilenceSweep(context.db, context.settings, context.signal)


async def test_a_silent_recipient_expires_synthetically_at_its_deadline(
    hub: Client, db: asyncpg.Connection
) -> None:
    subscription = uuid.uuid4()
    await db.execute(
        "INSERT INTO subscriptions (id, url, secret) VALUES ($1, 'http://127.0.0.1:9/x', 's')",
        subscription,
    )
    sent = await send_silent(hub)
    sweep = sweep_of(hub)

    assert await sweep.sweep() == 0  # not yet due: nothing happens
    await overdue(db, sent["id"])
    assert await sweep.sweep() == 1
    assert await sweep.sweep() == 0  # once

    view = await (await hub.get(f"/v1/messages/{sent['id']}")).json()
    [recipient] = view["recipients"]
    assert (recipient["status"], recipient["final"]) == ("expired", True)
    [expiry] = [event for event in view["events"] if event["synthetic"]]
    assert (expiry["status"], expiry["raw_id"]) == ("expired", None)
    assert expiry["provider_status"] == "no_final_report"
    assert expiry["failure_kind"] == "temporary"
    assert expiry["sequence"] == len(view["events"])  # the last stored
    queued = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE subscription_id = $1 AND event_id = $2",
        subscription,
        expiry["id"],
    )
    assert queued == 1  # re-emitted like any event


async def test_a_real_final_report_after_a_synthetic_one_takes_over(
    hub: Client, db: asyncpg.Connection
) -> None:
    sent = await send_silent(hub)
    sid = sent["recipients"][0]["provider_message_id"]
    await overdue(db, sent["id"])
    await sweep_of(hub).sweep()

    def report(status: str) -> dict[str, str]:
        return {"message_sid": sid, "status": status, "to": SILENT.lstrip("+")}

    late_sent = await hub.post("/callbacks/carrierx", json=report("sent"))
    after_sent = await (await hub.get(f"/v1/messages/{sent['id']}")).json()
    delivered = await hub.post("/callbacks/carrierx", json=report("delivered"))
    after = await (await hub.get(f"/v1/messages/{sent['id']}")).json()
    undelivered = await hub.post("/callbacks/carrierx", json=report("undelivered"))
    last = await (await hub.get(f"/v1/messages/{sent['id']}")).json()

    assert (late_sent.status, delivered.status, undelivered.status) == (200, 200, 200)
    # A real non-final report is kept in the timeline; it does not reopen the recipient.
    assert after_sent["recipients"][0]["status"] == "expired"
    assert latest(after_sent)["status"] == "sent"
    assert latest(after_sent)["recipient_status"] == "expired"
    # A real final takes over, with a new sequence, and is the current status from then on.
    assert (after["recipients"][0]["status"], after["recipients"][0]["final"]) == (
        "delivered",
        True,
    )
    assert latest(after)["recipient_status"] == "delivered"
    assert latest(after)["sequence"] == latest(after_sent)["sequence"] + 1
    # Two real finals keep the first-final rule.
    assert last["recipients"][0]["status"] == "delivered"
    assert await db.fetchval("SELECT bool_or(synthetic_final) FROM message_recipients") is False


async def test_a_recipient_that_got_its_final_report_never_expires(
    hub: Client, db: asyncpg.Connection
) -> None:
    sent = await send_silent(hub)
    sid = sent["recipients"][0]["provider_message_id"]
    await hub.post("/callbacks/carrierx", json={"message_sid": sid, "status": "delivered"})
    await overdue(db, sent["id"])

    assert await sweep_of(hub).sweep() == 1  # claimed, only to clear its deadline
    assert await db.fetchval("SELECT count(*) FROM events WHERE synthetic") == 0
    assert await db.fetchval("SELECT count(deadline) FROM message_recipients") == 0
    assert await sweep_of(hub).sweep() == 0


async def test_two_sweeps_at_once_expire_each_recipient_once(
    hub: Client, db: asyncpg.Connection, dsn: str
) -> None:
    message = await send_silent(hub)
    await db.execute(
        """
        INSERT INTO message_recipients
            (message_id, provider, provider_message_id, recipient, status, final, deadline)
        SELECT $1, 'carrierx', 'bulk-' || n, '+4477009' || lpad(n::text, 5, '0'), 'sent', false,
               now() - interval '1 minute'
        FROM generate_series(1, 1200) AS n
        """,
        uuid.UUID(message["id"]),
    )
    settings = hub.app[AppContext.KEY].settings
    databases = [await open_database(dsn, settings) for _ in range(2)]
    try:
        sweeps = [SilenceSweep(database, settings, Signal()) for database in databases]

        async def drain(sweep: SilenceSweep) -> int:
            total = 0
            while claimed := await sweep.sweep():
                total += claimed
            return total

        claimed = await asyncio.gather(*(drain(sweep) for sweep in sweeps))
    finally:
        for database in databases:
            await database.close()

    assert sum(claimed) == 1200
    assert await db.fetchval("SELECT count(*) FROM events WHERE synthetic") == 1200
    assert await db.fetchval("SELECT count(DISTINCT recipient_id) FROM events WHERE synthetic") == (
        1200
    )


async def test_the_claim_goes_through_the_due_index(db: asyncpg.Connection) -> None:
    await db.execute("SET enable_seqscan = off")
    plan = "\n".join(
        row[0]
        for row in await db.fetch(
            "EXPLAIN SELECT id FROM message_recipients"
            " WHERE deadline IS NOT NULL AND deadline <= now()"
            " ORDER BY deadline LIMIT 500 FOR UPDATE SKIP LOCKED"
        )
    )

    assert "message_recipients_due_idx" in plan


def test_the_deadline_is_expires_at_else_sending_plus_the_provider_timeout() -> None:
    settings = Settings(
        silence_timeout_s=100.0,
        providers={"swift": ProviderSettings(silence_timeout_s=10.0)},
    )
    now = datetime.now(UTC)
    later = now + timedelta(hours=5)

    def send(**changes: Any) -> SendRequest:
        return SendRequest(to=["+1"], sender=None, body="b", **changes)

    assert silence.deadline(settings, "swift", send(expires_at=later)) == later
    assert silence.deadline(settings, "swift", send(send_at=later)) == later + timedelta(seconds=10)
    waited = silence.deadline(settings, "carrierx", send()) - now
    assert timedelta(seconds=99) < waited < timedelta(seconds=110)
