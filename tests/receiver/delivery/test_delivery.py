"""Re-emission end to end with real local subscriber servers: signatures checked with the
`standardwebhooks` package, retries with the same webhook-id, 410, filters, replay, rotation, the
address guard, leases after a killed dispatcher, two dispatchers, the feed and the stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from ipaddress import ip_address, ip_network
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from receiver.app import create_app
from receiver.config import Settings
from receiver.delivery.addresses import is_public
from receiver.delivery.dispatcher import Dispatcher, retry_after_s
from receiver.storage import callbacks, outbox
from receiver.storage.notify import Signal
from receiver.storage.pool import Database
from tests.factories import a_raw_callback

Client = TestClient[Any, Any]
LOOPBACK = (ip_network("127.0.0.0/8"), ip_network("::1/128"))


@dataclass
class Subscriber:
    """A local subscriber: records what it receives, answers from a script (then 200)."""

    answers: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hold: asyncio.Event | None = None  # while set to an unset Event, requests hang
    body: bytes = b"ok"
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append((dict(request.headers), body))
        if self.hold is not None:
            await self.hold.wait()
        answer = self.answers.pop(0) if self.answers else 200
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return web.Response(status=status, headers=headers, body=self.body)

    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.received]


async def moved(request: web.Request) -> web.Response:
    raise web.HTTPFound("http://127.0.0.1:1/x")


@pytest.fixture
async def subscriber(aiohttp_server: Any) -> Subscriber:
    subscriber = Subscriber()
    app = web.Application()
    app.router.add_post("/hook", subscriber.handle)
    app.router.add_post("/moved", moved)
    server: TestServer = await aiohttp_server(app)
    subscriber.url = str(server.make_url("/hook"))
    return subscriber


def hub_settings(dsn: str, **changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "database_url": dsn,
        "db_pool_min_size": 0,
        "webhook_allowed_networks": LOOPBACK,
        "webhook_retry_delays_s": (0.1, 0.1, 0.1),
        "webhook_poll_s": 0.2,
        "webhook_lease_s": 2.0,
        "webhook_timeout_s": 0.5,
    }
    return Settings(**(fields | changes))


@pytest.fixture
async def hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    client: Client = await aiohttp_client(create_app(hub_settings(dsn), dsn))
    return client


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("not in time")
        await asyncio.sleep(0.05)


async def subscribe(client: Client, url: str, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/subscriptions", json={"url": url} | extra)
    assert response.status == 201, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def report(
    client: Client, sid: str, status: str = "delivered", to: str = "15162065574"
) -> None:
    response = await client.post(
        "/callbacks/carrierx",
        json={
            "message_sid": sid,
            "status": status,
            "to": to,
            "direction": "outbound",
            "date_status_changed": f"2024-06-14T00:00:0{len(status) % 10}Z",
        },
    )
    assert response.status == 200


async def test_events_arrive_signed_as_standard_webhooks(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscription = await subscribe(hub, subscriber.url, description="billing")
    assert subscription["secret"].startswith("whsec_")

    await report(hub, "sig-1")
    await eventually(lambda: len(subscriber.received) == 1)

    headers, body = subscriber.received[0]
    event = Webhook(subscription["secret"]).verify(body, headers)  # raises if not genuine
    stored = await db.fetchrow("SELECT id, sequence FROM events")
    assert stored is not None
    assert headers["webhook-id"] == event["id"] == stored["id"]
    assert (event["status"], event["sequence"], event["provider"]) == ("delivered", 1, "carrierx")
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(body, headers)

    async def delivered() -> bool:
        return bool(await db.fetchval("SELECT status FROM deliveries") == "delivered")

    await eventually(delivered)


async def test_failing_twice_then_succeeding_gets_the_same_webhook_id(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.answers = [500, 502]
    await subscribe(hub, subscriber.url)

    await report(hub, "retry-1")

    async def delivered() -> bool:
        return bool(await db.fetchval("SELECT status FROM deliveries") == "delivered")

    await eventually(delivered)
    assert len(subscriber.received) == 3
    assert len(set(subscriber.ids())) == 1
    attempts = await db.fetch("SELECT attempt, status_code FROM delivery_attempts ORDER BY id")
    assert [tuple(row) for row in attempts] == [(1, 500), (2, 502), (3, 200)]


async def test_after_the_last_try_the_delivery_is_failed(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.answers = [500] * 10
    await subscribe(hub, subscriber.url)

    await report(hub, "fail-1")

    async def failed() -> bool:
        return bool(await db.fetchval("SELECT status FROM deliveries") == "failed")

    await eventually(failed)
    assert len(subscriber.received) == 4  # the first try and three retries


async def test_429_with_retry_after_is_honoured(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.answers = [(429, {"Retry-After": "1"})]
    await subscribe(hub, subscriber.url)
    await report(hub, "slow-down-1")

    await eventually(lambda: len(subscriber.received) == 2)
    attempts = await db.fetch("SELECT started_at FROM delivery_attempts ORDER BY id")
    assert attempts[1]["started_at"] - attempts[0]["started_at"] >= timedelta(seconds=0.9)


async def test_410_disables_the_subscription(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.answers = [410]
    subscription = await subscribe(hub, subscriber.url)

    await report(hub, "gone-1")

    async def disabled() -> bool:
        row = await db.fetchrow("SELECT enabled, disabled_reason FROM subscriptions")
        return row is not None and row["enabled"] is False

    await eventually(disabled)
    await report(hub, "gone-2")
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 1  # nothing queued after
    shown = await (await hub.get(f"/v1/subscriptions/{subscription['id']}")).json()
    assert "410" in shown["disabled_reason"]


async def test_filters_choose_the_events(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    await subscribe(
        hub, subscriber.url, filters={"statuses": ["delivered"], "providers": ["carrierx"]}
    )

    await report(hub, "f-1", status="sent")
    await report(hub, "f-2", status="delivered")
    await report(hub, "f-3", status="undelivered")

    await eventually(lambda: len(subscriber.received) == 1)
    await asyncio.sleep(0.3)
    assert len(subscriber.received) == 1
    assert json.loads(subscriber.received[0][1])["provider_message_id"] == "f-2"


async def test_replay_queues_again(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscription = await subscribe(hub, subscriber.url)
    await report(hub, "r-1")
    await eventually(lambda: len(subscriber.received) == 1)

    async def recorded() -> bool:
        # The subscriber has it before the dispatcher records it: a replay leaves a delivery
        # under a live lease alone.
        return bool(await db.fetchval("SELECT status FROM deliveries") == "delivered")

    await eventually(recorded)
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = await hub.post(
        f"/v1/subscriptions/{subscription['id']}/replay", json={"since": since}
    )

    assert response.status == 202
    assert (await response.json())["queued"] == 1
    await eventually(lambda: len(subscriber.received) == 2)
    assert subscriber.ids()[0] == subscriber.ids()[1]


async def test_retry_one_delivery_now(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.answers = [410]
    subscription = await subscribe(hub, subscriber.url)
    await report(hub, "one-1")

    async def failed() -> bool:
        return bool(await db.fetchval("SELECT status FROM deliveries") == "failed")

    await eventually(failed)
    await hub.patch(f"/v1/subscriptions/{subscription['id']}", json={"enabled": True})
    delivery_id = await db.fetchval("SELECT id FROM deliveries")
    response = await hub.post(f"/v1/deliveries/{delivery_id}/retry")

    assert response.status == 202
    await eventually(lambda: len(subscriber.received) == 2)


async def test_the_sweep_clears_ended_secrets_and_expired_idempotency_answers(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    quiet = await aiohttp_client(create_app(hub_settings(dsn, dispatcher=False), dsn))
    subscription = await subscribe(quiet, "http://127.0.0.1:9/hook")
    still, ended = subscription["id"], (await subscribe(quiet, "http://127.0.0.1:9/h2"))["id"]
    for subscription_id in (still, ended):
        assert (await quiet.post(f"/v1/subscriptions/{subscription_id}/rotate-secret")).ok
    await db.execute(
        "UPDATE subscriptions SET previous_secret_until = now() - interval '1 second'"
        " WHERE id = $1::uuid",
        ended,
    )
    await db.execute(  # an Idempotency-Key answer past its retention goes in the same sweep
        "INSERT INTO idempotency_keys (key, request_hash, response_status, expires_at)"
        " VALUES ('expired', 'h', 201, now() - interval '1 second')"
    )

    dispatcher, pool = await dispatcher_for(dsn, hub_settings(dsn))
    running = asyncio.create_task(dispatcher.run())  # it sweeps as it starts
    try:

        async def cleared() -> bool:
            rows = await db.fetch(
                "SELECT id::text, previous_secret IS NULL AS gone FROM subscriptions"
            )
            kept = await db.fetchval("SELECT count(*) FROM idempotency_keys")
            return kept == 0 and {r["id"]: r["gone"] for r in rows} == {still: False, ended: True}

        await eventually(cleared)
    finally:
        await dispatcher.stop()
        await running
        await pool.close()


async def test_a_rotated_secret_signs_with_both_for_a_while(
    hub: Client, subscriber: Subscriber
) -> None:
    subscription = await subscribe(hub, subscriber.url)
    rotated = await (await hub.post(f"/v1/subscriptions/{subscription['id']}/rotate-secret")).json()

    await report(hub, "rot-1")
    await eventually(lambda: len(subscriber.received) == 1)

    headers, body = subscriber.received[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(rotated["secret"]).verify(body, headers)
    Webhook(subscription["secret"]).verify(body, headers)


@pytest.mark.parametrize(
    ("body", "field", "error"),
    [
        (
            {"url": "http://127.0.0.1:9/hook", "filters": {"providers": ["p" * 51]}},
            "filters.providers",
            "one of apicontrol, carrierx, properties, swift, telecom23",
        ),
        (
            {"url": "http://127.0.0.1:9/hook", "filters": {"providers": ["a\u0000"]}},
            "filters.providers.0",
            "Value error, must not contain a NUL character",
        ),
        (
            {"url": "http://127.0.0.1:9/hook", "description": "d" * 501},
            "description",
            "String should have at most 500 characters",
        ),
    ],
)
async def test_a_subscription_422_names_the_field_and_the_rule(
    hub: Client, body: dict[str, Any], field: str, error: str
) -> None:
    response = await hub.post("/v1/subscriptions", json=body)

    assert response.status == 422
    [detail] = (await response.json())["error"]["details"]
    assert (detail["field"], detail["error"]) == (field, error)


async def test_subscriptions_crud_and_validation(hub: Client) -> None:
    bad = await hub.post("/v1/subscriptions", json={"url": "ftp://example.com/x"})
    assert bad.status == 422

    created = await subscribe(
        hub, "http://127.0.0.1:9/hook", filters={"event_types": ["message.inbound"]}
    )
    listed = await (await hub.get("/v1/subscriptions")).json()
    assert [s["id"] for s in listed["data"]] == [created["id"]]
    assert "secret" not in listed["data"][0]
    patched = await hub.patch(
        f"/v1/subscriptions/{created['id']}", json={"description": "x", "enabled": False}
    )
    assert (await patched.json())["enabled"] is False
    assert (await hub.delete(f"/v1/subscriptions/{created['id']}")).status == 204
    assert (await hub.get(f"/v1/subscriptions/{created['id']}")).status == 404
    assert (await hub.get("/v1/subscriptions/not-a-uuid")).status == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://localhost:{port}/hook",
    ],
)
async def test_the_address_guard_refuses_private_addresses(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber, url: str
) -> None:
    client = await aiohttp_client(create_app(hub_settings(dsn, webhook_allowed_networks=()), dsn))
    port = subscriber.url.split(":")[2].split("/")[0]
    await subscribe(client, url.format(port=port))

    await report(client, "ssrf-1")

    async def refused() -> bool:
        error = await db.fetchval("SELECT error FROM delivery_attempts LIMIT 1")
        return bool(error)

    await eventually(refused)
    assert "address guard" in await db.fetchval("SELECT error FROM delivery_attempts LIMIT 1")
    assert subscriber.received == []


async def test_a_redirect_is_a_failure_not_followed(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    await subscribe(hub, subscriber.url.replace("/hook", "/moved"))
    await report(hub, "moved-1")

    async def attempted() -> bool:
        return bool(await db.fetchval("SELECT status_code FROM delivery_attempts LIMIT 1") == 302)

    await eventually(attempted)
    assert await db.fetchval("SELECT status FROM deliveries") == "pending"


async def dispatcher_for(dsn: str, settings: Settings) -> tuple[Dispatcher, asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    return Dispatcher(Database(pool, 2.0), settings, Signal()), pool


async def test_a_killed_dispatcher_leads_to_redelivery_after_the_lease(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    settings = hub_settings(dsn, dispatcher=False)
    client = await aiohttp_client(create_app(settings, dsn))
    await subscribe(client, subscriber.url)
    await report(client, "kill-1")
    subscriber.hold = asyncio.Event()

    first, first_pool = await dispatcher_for(dsn, settings)
    running = asyncio.create_task(first.run())
    await eventually(lambda: len(subscriber.received) == 1)
    for task in list(first.tasks):  # killed between the POST and marking it delivered
        task.cancel()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await first_pool.close()
    subscriber.hold.set()
    subscriber.hold = None
    assert await db.fetchval("SELECT status FROM deliveries") == "delivering"

    second, second_pool = await dispatcher_for(dsn, settings)
    running = asyncio.create_task(second.run())
    try:

        async def delivered() -> bool:
            return bool(await db.fetchval("SELECT status FROM deliveries") == "delivered")

        await eventually(delivered)
    finally:
        await second.stop()
        await running
        await second_pool.close()
    assert len(subscriber.received) == 2
    assert len(set(subscriber.ids())) == 1  # the same webhook-id: at least once, never lost
    assert await db.fetchval("SELECT attempts FROM deliveries") == 2


async def test_two_dispatchers_never_deliver_the_same_attempt_twice(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    settings = hub_settings(dsn, dispatcher=False, webhook_lease_s=30.0)
    client = await aiohttp_client(create_app(settings, dsn))
    await subscribe(client, subscriber.url)
    await subscribe(client, subscriber.url + "?second")
    for n in range(40):
        await report(client, f"two-{n}")

    pairs = [await dispatcher_for(dsn, settings) for _ in range(2)]
    runs = [asyncio.create_task(d.run()) for d, _ in pairs]
    try:

        async def all_delivered() -> bool:
            done = await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
            return bool(done == 80)

        await eventually(all_delivered, timeout_s=15)
    finally:
        for dispatcher, _ in pairs:
            await dispatcher.stop()
        await asyncio.gather(*runs)
        for _, pool in pairs:
            await pool.close()
    assert len(subscriber.received) == 80
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 80
    assert await db.fetchval("SELECT max(attempts) FROM deliveries") == 1


async def feed_all(
    client: Client, limit: int = 3, after: str | None = None
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        params = {"limit": str(limit)} | ({"after": after} if after else {})
        page = await (await client.get("/v1/events", params=params)).json()
        events.extend(page["data"])
        if not page["data"]:
            return events
        after = page["next_cursor"]


async def test_the_feed_returns_every_event_once_in_order(hub: Client) -> None:
    for n in range(7):
        await report(hub, f"feed-{n}")

    events = await feed_all(hub)

    assert [e["provider_message_id"] for e in events] == [f"feed-{n}" for n in range(7)]
    assert len({e["cursor"] for e in events}) == 7
    await report(hub, "feed-7")
    later = await feed_all(hub, after=events[-1]["cursor"])
    assert [e["provider_message_id"] for e in later] == ["feed-7"]


async def test_the_feed_never_skips_a_transaction_that_commits_late(
    hub: Client, dsn: str, db: asyncpg.Connection
) -> None:
    slow = await asyncpg.connect(dsn)
    try:
        transaction = slow.transaction()
        await transaction.start()
        raw = a_raw_callback()
        from normalizers.base import CallbackRequest
        from normalizers.carrierx import PROVIDER

        request = CallbackRequest(
            method="POST",
            path="/callbacks/carrierx",
            body=json.dumps({"message_sid": "late", "status": "sent", "to": "1516"}).encode(),
        )
        events = [
            e.stored_raw(str(raw.id)) for e in PROVIDER.parse_callback(request, raw.received_at)
        ]
        await callbacks.ingest_callback(slow, raw, outcome="normalised", error=None, events=events)

        await report(hub, "early")  # commits first, though its transaction started later
        assert await feed_all(hub) == []  # held back while the earlier transaction runs
        await transaction.commit()
    finally:
        await slow.close()

    assert [e["provider_message_id"] for e in await feed_all(hub)] == ["late", "early"]


async def test_the_stream_is_live_and_resumable(hub: Client) -> None:
    await report(hub, "s-0")
    received: list[tuple[str, dict[str, Any]]] = []

    async def read(response: Any, count: int) -> None:
        event_id = ""
        async for line in response.content:
            text = line.decode().rstrip("\n")
            if text.startswith("id: "):
                event_id = text[4:]
            elif text.startswith("data: "):
                received.append((event_id, json.loads(text[6:])))
                if len(received) >= count:
                    return

    response = await hub.get("/v1/events/stream")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    reading = asyncio.create_task(read(response, 3))
    await asyncio.sleep(0.2)
    await report(hub, "s-1")
    await report(hub, "s-2")
    await asyncio.wait_for(reading, timeout=10)
    response.close()
    assert [e["provider_message_id"] for _, e in received] == ["s-0", "s-1", "s-2"]

    resumed = await hub.get("/v1/events/stream", headers={"Last-Event-ID": received[0][0]})
    received.clear()
    await asyncio.wait_for(read(resumed, 2), timeout=10)
    resumed.close()
    assert [e["provider_message_id"] for _, e in received] == ["s-1", "s-2"]


async def test_a_worker_elsewhere_is_woken_by_notify_not_by_polling(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    settings = hub_settings(dsn, dispatcher=False)
    client = await aiohttp_client(create_app(settings, dsn))
    await subscribe(client, subscriber.url)
    worker_settings = hub_settings(dsn, webhook_poll_s=30.0)  # polling alone would take 30 s
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    signal = Signal()
    database = Database(pool, 2.0)
    worker = Dispatcher(database, worker_settings, signal)
    async with signal.connected(database, dsn):
        running = asyncio.create_task(worker.run())
        await asyncio.sleep(0.3)  # the worker is idle, waiting
        try:
            started = asyncio.get_running_loop().time()
            await report(client, "notify-1")
            await eventually(lambda: len(subscriber.received) == 1, timeout_s=5)
            assert asyncio.get_running_loop().time() - started < 5
        finally:
            await worker.stop()
            await running
    await pool.close()


async def test_a_subscription_failing_continuously_is_disabled(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    settings = hub_settings(dsn, webhook_disable_after_s=0.5, webhook_retry_delays_s=(0.3,) * 10)
    client = await aiohttp_client(create_app(settings, dsn))
    subscriber.answers = [500] * 20
    await subscribe(client, subscriber.url)

    await report(client, "down-1")

    async def disabled() -> bool:
        row = await db.fetchrow("SELECT enabled, disabled_reason FROM subscriptions")
        return row is not None and row["enabled"] is False

    await eventually(disabled)
    assert await db.fetchval("SELECT disabled_reason FROM subscriptions") == "failing continuously"


async def queue_deliveries(db: asyncpg.Connection, client: Client, url: str, count: int) -> None:
    await subscribe(client, url, enabled=False)  # nothing dispatched while we look
    for n in range(count):
        await report(client, f"q-{n}")
    await db.execute("UPDATE subscriptions SET enabled = true")
    await db.execute(
        "INSERT INTO deliveries (subscription_id, event_id) SELECT s.id, e.id"
        " FROM subscriptions s, events e"
    )


async def test_dispatchers_claiming_at_once_keep_a_subscription_under_its_cap(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    client = await aiohttp_client(create_app(hub_settings(dsn, dispatcher=False), dsn))
    await queue_deliveries(db, client, subscriber.url, 20)
    connections = [await asyncpg.connect(dsn) for _ in range(6)]
    try:
        # six dispatchers claim together, each asking for up to 10, with 2 slots a subscription
        claims = await asyncio.gather(
            *(outbox.claim_deliveries(c, 10, 2, 30.0) for c in connections)
        )
    finally:
        for connection in connections:
            await connection.close()

    assert sum(len(claimed) for claimed in claims) == 2
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'delivering'") == 2


async def test_a_claim_leases_exactly_what_it_returns(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    client = await aiohttp_client(create_app(hub_settings(dsn, dispatcher=False), dsn))
    await queue_deliveries(db, client, subscriber.url, 10)

    claimed = await outbox.claim_deliveries(db, 1, 4, 30.0)

    assert len(claimed) == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'delivering'") == 1
    assert await db.fetchval("SELECT sum(attempts) FROM deliveries") == 1


async def test_the_per_subscriber_limit_holds_across_dispatchers(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    client = await aiohttp_client(create_app(hub_settings(dsn, dispatcher=False), dsn))
    await queue_deliveries(db, client, subscriber.url, 10)

    first = await outbox.claim_deliveries(db, 10, 3, 30.0)
    second = await outbox.claim_deliveries(db, 10, 3, 30.0)  # another dispatcher

    assert (len(first), len(second)) == (3, 0)


async def test_a_disabled_subscription_gets_nothing_more(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    client = await aiohttp_client(create_app(hub_settings(dsn, dispatcher=False), dsn))
    await queue_deliveries(db, client, subscriber.url, 3)
    await db.execute("UPDATE subscriptions SET enabled = false")

    assert await outbox.claim_deliveries(db, 10, 4, 30.0) == []


async def test_nul_in_a_subscriber_answer_is_recorded_not_looped(
    hub: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    subscriber.body = b"ok\x00ok"
    await subscribe(hub, subscriber.url)
    await report(hub, "nul-1")

    async def delivered() -> bool:
        return bool(await db.fetchval("SELECT status FROM deliveries") == "delivered")

    await eventually(delivered)
    assert await db.fetchval("SELECT response_excerpt FROM delivery_attempts") == "okok"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("nan", None), ("inf", None), ("-5", 0.0), ("soon", None), (None, None)],
)
def test_retry_after(value: str | None, expected: float | None) -> None:
    assert retry_after_s(value) == expected


def test_retry_after_as_an_http_date() -> None:
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    seconds = retry_after_s(in_a_minute)
    assert seconds is not None
    assert 55 <= seconds <= 61


@pytest.mark.parametrize(
    "address",
    [
        "2002:7f00:1::1",
        "fec0::1",
        "64:ff9b::7f00:1",
        "::ffff:8.8.8.8",
        "100.64.1.1",
        "0.0.0.0",
        "fd00::1",
        "169.254.1.1",
        "10.1.2.3",
        "::1",
    ],
)
def test_the_guard_refuses(address: str) -> None:
    assert not is_public(ip_address(address), ())


def test_the_guard_lets_public_and_allowed_addresses_through() -> None:
    assert is_public(ip_address("93.184.216.34"), ())
    assert is_public(ip_address("127.0.0.1"), LOOPBACK)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/events?after=%C2%B2.1", None),
        ("GET", "/v1/events?after=99999999999999999999.1", None),
        ("GET", "/v1/events?type=%00", None),
        ("GET", "/v1/events/stream?provider=%00", None),
        ("POST", "/v1/subscriptions", {"url": "http://127.0.0.1:9/x", "description": "a\u0000b"}),
        (
            "POST",
            "/v1/subscriptions",
            {"url": "http://127.0.0.1:9/x", "filters": {"providers": ["\u0000"]}},
        ),
        ("POST", "/v1/deliveries/99999999999999999999/retry", None),
    ],
)
async def test_bad_input_is_4xx_never_500(hub: Client, method: str, path: str, body: Any) -> None:
    response = await hub.request(method, path, json=body)

    assert 400 <= response.status < 500
    assert "error" in await response.json()


async def test_replay_since_out_of_range_is_422(hub: Client, subscriber: Subscriber) -> None:
    subscription = await subscribe(hub, subscriber.url)
    for since in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        response = await hub.post(
            f"/v1/subscriptions/{subscription['id']}/replay", json={"since": since}
        )
        assert response.status == 422


def ended(
    claimed: outbox.Claimed, outcome: str, status: int | None, disable: str | None = None
) -> outbox.Attempt:
    return outbox.Attempt(
        claimed=claimed,
        started_at=datetime.now(UTC),
        status_code=status,
        latency_ms=1.0,
        excerpt="ok",
        error=None if status else "refused",
        outcome=outcome,
        next_attempt_in_s=5.0 if outcome == "pending" else None,
        disable_subscription=disable,
    )


async def test_attempts_recorded_in_one_batch_each_get_their_own_consequence(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    client = await aiohttp_client(create_app(hub_settings(dsn, dispatcher=False), dsn))
    await queue_deliveries(db, client, subscriber.url, 4)
    await db.execute("UPDATE subscriptions SET failing_since = now() - interval '1 hour'")
    claimed = await outbox.claim_deliveries(db, 4, 4, 30.0)
    stolen = claimed[3]  # its lease ran out and another dispatcher took it
    await db.execute(
        "UPDATE deliveries SET lease_token = $1 WHERE id = $2", uuid.uuid4(), stolen.delivery_id
    )

    owned = await outbox.record_attempts(
        db,
        [
            ended(claimed[0], "delivered", 200),
            ended(claimed[1], "pending", 500),
            ended(claimed[2], "pending", None),
            ended(stolen, "delivered", 200),
        ],
        3600.0,
    )

    assert owned == [True, True, True, False]
    rows = await db.fetch("SELECT id, status, attempts, last_status FROM deliveries ORDER BY id")
    by_id = {row["id"]: row for row in rows}
    assert by_id[claimed[0].delivery_id]["status"] == "delivered"
    assert by_id[claimed[1].delivery_id]["status"] == "pending"
    assert by_id[claimed[1].delivery_id]["last_status"] == 500
    assert by_id[stolen.delivery_id]["status"] == "delivering"  # left to its new holder
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 4
    # One delivered attempt in the batch: the subscriber is alive again.
    assert await db.fetchval("SELECT failing_since FROM subscriptions") is None


async def test_a_batch_of_failures_marks_the_subscription_failing_then_disabled(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    client = await aiohttp_client(create_app(hub_settings(dsn, dispatcher=False), dsn))
    await queue_deliveries(db, client, subscriber.url, 4)
    first = await outbox.claim_deliveries(db, 2, 4, 30.0)

    await outbox.record_attempts(db, [ended(c, "pending", 503) for c in first], 3600.0)

    row = await db.fetchrow("SELECT enabled, failing_since FROM subscriptions")
    assert row is not None
    assert row["enabled"] is True
    assert row["failing_since"] is not None
    await db.execute("UPDATE subscriptions SET failing_since = now() - interval '2 hours'")
    second = await outbox.claim_deliveries(db, 2, 4, 30.0)
    await outbox.record_attempts(
        db, [ended(second[0], "delivered", 200), ended(second[1], "failed", 410, "gone")], 3600.0
    )
    row = await db.fetchrow("SELECT enabled, disabled_reason FROM subscriptions")
    assert row is not None
    assert (row["enabled"], row["disabled_reason"]) == (False, "gone")  # 410 wins


async def test_a_delivery_deleted_mid_batch_costs_only_itself(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    settings = hub_settings(dsn, dispatcher=False)
    client = await aiohttp_client(create_app(settings, dsn))
    await queue_deliveries(db, client, subscriber.url, 3)
    claimed = await outbox.claim_deliveries(db, 3, 4, 30.0)
    await db.execute("DELETE FROM deliveries WHERE id = $1", claimed[1].delivery_id)
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    assert pool is not None
    try:
        dispatcher = Dispatcher(Database(pool, 2.0), settings, Signal())
        answers = await dispatcher._record([ended(c, "delivered", 200) for c in claimed])
    finally:
        await pool.close()

    assert answers == [True, False, True]  # the deleted one is not owned any more
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 2


async def test_a_hanging_subscriber_does_not_hold_back_a_healthy_one(
    aiohttp_client: Any, aiohttp_server: Any, dsn: str, db: asyncpg.Connection
) -> None:
    # 3 slots, 2 per subscriber: a subscriber that never answers holds more than half of them.
    settings = hub_settings(
        dsn,
        dispatcher=False,
        webhook_concurrency=3,
        webhook_per_subscription=2,
        webhook_timeout_s=6.0,
        webhook_lease_s=30.0,
    )
    client = await aiohttp_client(create_app(settings, dsn))
    slow, fast = Subscriber(hold=asyncio.Event()), Subscriber()
    for sub in (slow, fast):
        app = web.Application()
        app.router.add_post("/hook", sub.handle)
        server: TestServer = await aiohttp_server(app)
        sub.url = str(server.make_url("/hook"))
        await subscribe(client, sub.url)
    await report(client, "hang-1")
    await report(client, "hang-2")  # 4 deliveries: the first claim (3) comes back full

    dispatcher, pool = await dispatcher_for(dsn, settings)
    running = asyncio.create_task(dispatcher.run())
    try:
        # Both within seconds, not after the slow ones time out.
        await eventually(lambda: len(fast.received) == 2, timeout_s=3.0)
    finally:
        assert slow.hold is not None
        slow.hold.set()
        await dispatcher.stop()
        await running
        await pool.close()


async def test_a_subscriber_with_a_backlog_does_not_starve_the_others(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    client = await aiohttp_client(create_app(hub_settings(dsn, dispatcher=False), dsn))
    await subscribe(client, subscriber.url + "?backlogged")
    for n in range(20):
        await report(client, f"bl-{n}")
    fresh = await subscribe(client, subscriber.url + "?fresh")
    await report(client, "bl-new")  # one delivery for `fresh`, due now, the newest of all

    # Claims of 2 slots, at most 1 in flight per subscriber.
    first = await outbox.claim_deliveries(db, 2, 1, 30.0)
    second = await outbox.claim_deliveries(db, 2, 1, 30.0)

    taken = [str(c.subscription_id) for c in first + second]
    assert fresh["id"] in taken
    assert len(first) == 2  # one of each: the backlogged one is at its limit after that
    assert second == []
