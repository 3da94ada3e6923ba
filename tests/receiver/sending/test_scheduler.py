"""send_at for every provider: passed on where the provider schedules (apicontrol, Properties),
held by the hub and sent at its time where it cannot (23 Telecom, Swift, CarrierX), each held
message sent once whatever the number of workers, cancellable until it goes."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.context import AppContext
from receiver.sandbox.common import seconds_until
from receiver.sending.scheduler import Scheduler
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]
TOMORROW = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@pytest.fixture
async def hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    return await sandbox_hub(aiohttp_client, dsn)  # the tests drive the scheduler


async def send(hub: Client, provider: str, **changes: Any) -> tuple[int, dict[str, Any]]:
    sender = "MyApp" if provider == "telecom23" else "+447700900999"
    body = {"provider": provider, "to": ["+447700900001"], "from": sender, "body": "hi"}
    answer = await hub.post("/v1/messages", json=body | changes)
    return answer.status, await answer.json()


async def provider_calls(db: asyncpg.Connection, message_id: str) -> int:
    """The provider's answers stored for a message: one per call made."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM raw_callbacks c WHERE c.source = 'send_answer' AND EXISTS ("
        " SELECT 1 FROM events e WHERE e.raw_id = c.id AND e.message_id = $1::uuid)",
        message_id,
    )
    return count


async def due_now(db: asyncpg.Connection, message_id: str | None = None) -> None:
    """The send time came (instead of waiting for it)."""
    await db.execute(
        "UPDATE messages SET dispatch_at = now() - interval '1 second'"
        " WHERE dispatch_at IS NOT NULL AND ($1::uuid IS NULL OR id = $1::uuid)",
        message_id,
    )


def scheduler_of(hub: Client) -> Scheduler:
    return Scheduler(hub.app[AppContext.KEY])


@pytest.mark.parametrize("provider", ["telecom23", "swift", "carrierx"])
async def test_a_provider_that_cannot_schedule_gets_the_message_at_its_send_time(
    hub: Client, db: asyncpg.Connection, provider: str
) -> None:
    status, held = await send(hub, provider, send_at=TOMORROW)

    assert status == 201, held
    assert [r["status"] for r in held["recipients"]] == ["scheduled"]
    assert await provider_calls(db, held["id"]) == 0  # not sent now (it used to be)
    scheduler = scheduler_of(hub)
    assert await scheduler.tick() == 0  # not yet

    await due_now(db)
    assert await scheduler.tick() == 1
    assert await scheduler.tick() == 0  # once

    assert await provider_calls(db, held["id"]) == 1
    view = await (await hub.get(f"/v1/messages/{held['id']}")).json()
    assert view["recipients"][0]["status"] in ("accepted", "queued", "sent", "delivered")
    assert view["recipients"][0]["provider_message_id"] is not None


async def test_two_schedulers_send_each_held_message_once(
    hub: Client, db: asyncpg.Connection
) -> None:
    ids = [(await send(hub, "telecom23", send_at=TOMORROW))[1]["id"] for _ in range(30)]
    await due_now(db)
    schedulers = [scheduler_of(hub), scheduler_of(hub)]

    async def drain(scheduler: Scheduler) -> int:
        total = 0
        while claimed := await scheduler.tick():
            total += claimed
        return total

    claimed = await asyncio.gather(*(drain(s) for s in schedulers))

    assert sum(claimed) == 30
    assert [await provider_calls(db, message_id) for message_id in ids] == [1] * 30


async def test_a_held_message_can_be_cancelled_until_it_goes(
    hub: Client, db: asyncpg.Connection
) -> None:
    subscription = uuid.uuid4()
    await db.execute(
        "INSERT INTO subscriptions (id, url, secret) VALUES ($1, 'http://127.0.0.1:9/x', 's')",
        subscription,
    )
    _, held = await send(hub, "carrierx", send_at=TOMORROW)
    _, other = await send(hub, "swift", send_at=TOMORROW)

    cancelled = await hub.delete(f"/v1/messages/{held['id']}")
    again = await hub.delete(f"/v1/messages/{held['id']}")
    by_post = await hub.post(f"/v1/messages/{other['id']}/cancel")
    unknown = await hub.delete(f"/v1/messages/{uuid.uuid4()}")
    await due_now(db)
    sent = await scheduler_of(hub).tick()

    answer = await cancelled.json()
    assert cancelled.status == 200, answer
    assert [(r["status"], r["final"]) for r in answer["recipients"]] == [("cancelled", True)]
    assert (again.status, (await again.json())["error"]["code"]) == (409, "not_cancellable")
    assert by_post.status == 200
    assert unknown.status == 404
    assert sent == 0  # nothing left to send
    assert await provider_calls(db, held["id"]) == 0
    events = await db.fetch(
        "SELECT status, synthetic FROM events WHERE message_id = $1::uuid", held["id"]
    )
    assert [(e["status"], e["synthetic"]) for e in events] == [("cancelled", True)]
    queued = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE subscription_id = $1", subscription
    )
    assert queued == 2  # subscribers hear of both cancellations


async def test_a_sent_or_provider_scheduled_message_cannot_be_cancelled(hub: Client) -> None:
    _, now = await send(hub, "carrierx")
    _, provider_held = await send(hub, "apicontrol", send_at=TOMORROW)

    assert (await hub.delete(f"/v1/messages/{now['id']}")).status == 409
    assert (await hub.delete(f"/v1/messages/{provider_held['id']}")).status == 409


async def test_a_held_message_past_its_expiry_is_not_sent(
    hub: Client, db: asyncpg.Connection
) -> None:
    later = datetime.now(UTC) + timedelta(days=1)
    _, held = await send(
        hub,
        "telecom23",
        send_at=later.isoformat(),
        expires_at=(later + timedelta(hours=1)).isoformat(),
    )
    await db.execute(
        "UPDATE messages SET dispatch_at = now() - interval '2 hours',"
        " expires_at = now() - interval '1 hour' WHERE id = $1::uuid",
        held["id"],
    )

    assert await scheduler_of(hub).tick() == 1

    assert await provider_calls(db, held["id"]) == 0
    view = await (await hub.get(f"/v1/messages/{held['id']}")).json()
    assert view["recipients"][0]["status"] == "expired"
    assert view["events"][-1]["provider_status"] == "expired_before_sending"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"send_at": TOMORROW, "expires_at": TOMORROW}, "expires_at"),
        ({"expires_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()}, "expires_at"),
    ],
)
async def test_an_expiry_before_the_send_time_is_422(
    hub: Client, changes: dict[str, Any], field: str
) -> None:
    status, answer = await send(hub, "telecom23", **changes)

    assert status == 422
    assert [d["field"] for d in answer["error"]["details"]] == [field]


async def test_a_provider_that_schedules_is_given_the_send_time_and_reports_after_it(
    hub: Client, db: asyncpg.Connection
) -> None:
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    status, sent = await send(hub, "apicontrol", send_at=send_at.isoformat())

    assert status == 201
    assert [r["status"] for r in sent["recipients"]] == ["scheduled"]  # at the provider
    assert await provider_calls(db, sent["id"]) == 1
    deadline = time.monotonic() + 30
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = await (await hub.get(f"/v1/messages/{sent['id']}")).json()
        if view["recipients"][0]["final"]:
            break
        await asyncio.sleep(0.1)
    reports = [e for e in view["events"] if e["raw_id"] and e["status"] != "scheduled"]
    assert reports, view
    # The simulated provider sent nothing before the send time, as the real one.
    assert min(datetime.fromisoformat(e["received_at"]) for e in reports) >= send_at


async def test_a_paused_apicontrol_message_is_scheduled_and_never_reported(
    hub: Client, db: asyncpg.Connection
) -> None:
    status, sent = await send(hub, "apicontrol", options={"paused": True})

    assert status == 201
    assert [r["status"] for r in sent["recipients"]] == ["scheduled"]


def test_the_sandbox_reads_a_send_time_as_the_provider_takes_it() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=60)

    assert 55 < seconds_until(soon.isoformat().replace("+00:00", "Z")) <= 60
    assert 55 < seconds_until(int(soon.timestamp())) <= 60
    assert seconds_until("2001-01-01T00:00:00Z") == 0.0
    assert seconds_until(None) == 0.0
    assert seconds_until("soon") == 0.0
