"""The providers' health: the circuit breaker opens on send errors in a row and a probe closes
it; the window's rules (slow texts, a low delivery rate) degrade a provider for a country and
it recovers; routing moves traffic to the healthy ones, never when every one is degraded; every
change is a provider.health event for the operator's subscriptions that ask for it. Time is
driven by the rows' own times and the watch's `now`, not by waiting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from receiver.config import Settings
from receiver.context import AppContext
from receiver.routing.choice import ROUTE_TABLE, Recipient, RouteTable, WeightedTurns, decide
from receiver.routing.health import HealthWatch
from receiver.storage import messages
from receiver.storage.notify import Signal
from receiver.storage.routes import RouteSpec, SendRoute
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]

ROUTE = {"name": "uk", "match": {"country": ["GB"]}, "providers": ["swift", "carrierx"]}


async def send(hub: Client, to: str = "+447700900001") -> dict[str, Any]:
    answer = await hub.post(
        "/v1/messages", json={"to": [to], "from": "+447700900999", "body": "hi"}
    )
    body: dict[str, Any] = await answer.json()
    assert answer.status == 201, body
    return body


async def health_events(db: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT provider, details, tenant FROM events WHERE type = 'provider.health'"
        " ORDER BY stored_at, id"
    )
    return rows


async def test_send_errors_in_a_row_open_the_circuit_and_a_probe_closes_it(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(
        aiohttp_client, dsn, send_attempts=1, health_send_errors=2, health_probe_s=30
    )
    # Time moves when the test says: however slow the machine, the third send comes before
    # HEALTH_PROBE_S, and the probe after it.
    shift = [0.0]
    table = hub.app[ROUTE_TABLE]
    table.breakers.clock = lambda: 1000.0 + shift[0]
    table.wall_clock = lambda: datetime.now(UTC) + timedelta(seconds=shift[0])
    assert (await hub.post("/v1/routes", json=ROUTE)).status == 201
    everything = await hub.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/x"})
    asking = await hub.post(
        "/v1/subscriptions",
        json={"url": "http://127.0.0.1:9/y", "filters": {"event_types": ["provider.health"]}},
    )
    await hub.put("/v1/sandbox/providers/swift", json={"mode": "down"})

    first = await send(hub)
    second = await send(hub)
    third = await send(hub)

    assert [len(m["recipients"][0]["attempts"]) for m in (first, second, third)] == [2, 2, 1]
    view = await (await hub.get(f"/v1/messages/{third['id']}")).json()
    assert view["routing"][0]["providers"] == ["carrierx", "swift"]
    assert "swift degraded (2 send errors in a row" in view["routing"][0]["why"]
    [opened] = await health_events(db)
    assert opened["provider"] == "swift"
    assert opened["tenant"] is None
    assert '"state": "degraded"' in opened["details"]
    assert '"send_errors"' in opened["details"]

    await hub.put("/v1/sandbox/providers/swift", json={"mode": "normal"})
    shift[0] += 31  # past HEALTH_PROBE_S: the next send is the probe
    probe = await send(hub)

    assert probe["recipients"][0]["provider"] == "swift"
    closed = (await health_events(db))[-1]
    assert '"state": "healthy"' in closed["details"]
    queued = await db.fetch(
        "SELECT d.subscription_id FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE e.type = 'provider.health'"
    )
    asked_id = uuid.UUID((await asking.json())["id"])
    assert {row["subscription_id"] for row in queued} == {asked_id}
    assert (await everything.json())["id"] not in {str(r["subscription_id"]) for r in queued}


async def sent_long_ago(
    db: asyncpg.Connection, provider: str, count: int, minutes: int, status: str, after_s: float
) -> None:
    """`count` recipients of one provider in GB, sent `minutes` ago, now `status` (`after_s`
    after sending)."""
    for n in range(count):
        message_id = uuid.uuid4()
        await messages.create_message(
            db,
            message_id,
            provider,
            [f"+4477009{n:05d}"],
            tenant="default",
            sender=None,
            body="hi",
            client_ref=None,
            segments=1,
            encoding="GSM-7",
            request={},
            send_at=None,
            expires_at=None,
            idempotency_key=None,
            deadline=datetime.now(UTC) + timedelta(days=1),
            countries={f"+4477009{n:05d}": "GB"},
        )
        await db.execute(
            "UPDATE message_recipients SET created_at = now() - make_interval(mins => $2),"
            " updated_at = now() - make_interval(mins => $2) + make_interval(secs => $3),"
            " status = $4, final = $4 IN ('delivered', 'undelivered')"
            " WHERE message_id = $1",
            message_id,
            minutes,
            after_s,
            status,
        )


def watch_of(dsn_db: Any, settings: Settings) -> HealthWatch:
    return HealthWatch(dsn_db, settings, Signal())


async def test_slow_texts_degrade_a_provider_for_the_country_until_they_are_not(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn, health_hold_s=600)
    context = hub.app[AppContext.KEY]
    watch = watch_of(context.db, context.settings)
    await sent_long_ago(db, "swift", 17, 10, "delivered", 20)  # fast
    await sent_long_ago(db, "swift", 3, 10, "sent", 0)  # 10 min and still not delivered

    assert await watch.tick() == 1
    [event] = await health_events(db)
    assert '"rule": "slow"' in event["details"]
    assert '"country": "GB"' in event["details"]
    assert "15% of 20 texts" in event["details"]
    assert await watch.tick() == 0  # nothing new, and held anyway

    await db.execute("UPDATE message_recipients SET status = 'delivered', final = true")
    assert await watch.tick() == 0  # recovered, but within the hold time
    assert await watch.tick(now=datetime.now(UTC) + timedelta(seconds=601)) == 1
    assert '"state": "healthy"' in (await health_events(db))[-1]["details"]


async def test_a_low_delivery_rate_degrades_a_provider(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    context = hub.app[AppContext.KEY]
    await sent_long_ago(db, "carrierx", 8, 3, "delivered", 10)
    await sent_long_ago(db, "carrierx", 12, 3, "undelivered", 10)

    assert await watch_of(context.db, context.settings).tick() == 1
    [event] = await health_events(db)
    assert '"rule": "delivery_rate"' in event["details"]
    assert "delivered 40% of 20 ended texts" in event["details"]
    table: RouteTable = hub.app[ROUTE_TABLE]
    await table.current(context.db)
    assert table.health("carrierx", "GB") is not None
    assert table.health("carrierx", "US") is None


def test_routing_moves_traffic_to_the_healthy_never_when_every_one_is_degraded() -> None:
    route = SendRoute("uk", 10, RouteSpec(providers=["swift", "carrierx", "telecom23"]))
    recipient = Recipient("+447700900001", "GB", "default", None, "sms")

    def some(provider: str, country: str | None) -> str | None:
        return "slow" if provider == "swift" else None

    def every(provider: str, country: str | None) -> str | None:
        return "slow"

    moved = decide(route, recipient, lambda name: True, some, WeightedTurns())
    kept = decide(route, recipient, lambda name: True, every, WeightedTurns())

    assert moved.providers == ("carrierx", "telecom23", "swift")
    assert moved.why == "route uk: priority: carrierx first; swift degraded (slow)"
    assert kept.providers == ("swift", "carrierx", "telecom23")
