"""Events reach a JetStream consumer and a RabbitMQ queue, signed as webhooks are (verified with
the `standardwebhooks` package), filters applied; a stream missing, a queue unbound and wrong
credentials each give a failed attempt with a clear error, then recover."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import nats
import pytest
from nats.js.api import StreamConfig
from standardwebhooks.webhooks import Webhook

from receiver.app import create_app
from tests.brokers.servers import NatsServer, RabbitServer
from tests.receiver.delivery.test_delivery import Client, eventually, hub_settings, report


@pytest.fixture
async def hub(
    aiohttp_client: Any,
    dsn: str,
    db: asyncpg.Connection,
    nats_server: NatsServer,
    rabbit_server: RabbitServer,
) -> Client:
    destinations = {
        "local": {"url": nats_server.url},
        "rabbit": {"url": rabbit_server.url},
        "wrong": {"url": rabbit_server.url.replace("guest:guest", "guest:not-the-password")},
    }
    client: Client = await aiohttp_client(
        create_app(hub_settings(dsn, destinations=destinations), dsn)
    )
    return client


@pytest.fixture
async def jetstream(nats_server: NatsServer) -> AsyncIterator[Any]:
    client = await nats.connect(nats_server.url)
    stream = client.jetstream()
    yield stream
    for name in ("SMS", "LATE"):
        with contextlib.suppress(Exception):  # not made by this test
            await stream.delete_stream(name)
    await client.close()


@pytest.fixture
async def rabbit(rabbit_server: RabbitServer) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(rabbit_server.url)
    channel = await connection.channel()
    yield channel
    await connection.close()


async def subscribe(hub: Client, destination: dict[str, str], **extra: Any) -> dict[str, Any]:
    made = await hub.post("/v1/subscriptions", json={"destination": destination} | extra)
    assert made.status == 201, await made.text()
    answer: dict[str, Any] = await made.json()
    return answer


async def attempts(db: asyncpg.Connection, subscription_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT d.id, d.status, d.attempts, d.last_error FROM deliveries d"
        " WHERE d.subscription_id = $1::uuid ORDER BY d.id",
        subscription_id,
    )
    return rows


async def test_jetstream_gets_signed_events_deduplicated_by_event_id(
    hub: Client, db: asyncpg.Connection, jetstream: Any
) -> None:
    await jetstream.add_stream(StreamConfig(name="SMS", subjects=["sms.>"]))
    subscription = await subscribe(
        hub,
        {"kind": "jetstream", "name": "local", "subject": "sms.events"},
        filters={"statuses": ["delivered"]},
    )

    await report(hub, "js-1", "delivered")
    await report(hub, "js-2", "failed")  # not taken by the filter

    async def delivered() -> bool:
        rows = await attempts(db, subscription["id"])
        return len(rows) == 1 and rows[0]["status"] == "delivered"

    await eventually(delivered)
    consumer = await jetstream.pull_subscribe("sms.events", durable="reader")
    [message] = await consumer.fetch(1, timeout=5)
    event = Webhook(subscription["secret"]).verify(message.data, dict(message.headers))
    assert event["provider_message_id"] == "js-1"
    assert message.headers["Nats-Msg-Id"] == message.headers["webhook-id"] == event["id"]
    # The hub's own retry of the same event: the stream's duplicate window drops it.
    await db.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = now() WHERE subscription_id"
        " = $1::uuid",
        subscription["id"],
    )

    async def published_twice() -> bool:
        rows = await attempts(db, subscription["id"])
        return bool(rows[0]["status"] == "delivered" and rows[0]["attempts"] == 2)

    await eventually(published_twice)
    info = await jetstream.stream_info("SMS")
    assert info.state.messages == 1
    said = await db.fetch("SELECT response_excerpt FROM delivery_attempts ORDER BY attempt")
    assert [row["response_excerpt"] for row in said] == [
        "stored by stream SMS as 1",
        "stored by stream SMS as 1 (a duplicate: the stream had it)",
    ]


async def test_no_stream_for_the_subject_is_a_failed_attempt_then_it_recovers(
    hub: Client, db: asyncpg.Connection, jetstream: Any
) -> None:
    subscription = await subscribe(
        hub, {"kind": "jetstream", "name": "local", "subject": "late.events"}
    )
    await report(hub, "js-late")

    async def refused() -> bool:
        rows = await attempts(db, subscription["id"])
        return bool(rows) and rows[0]["last_error"] is not None

    await eventually(refused)
    [row] = await attempts(db, subscription["id"])
    assert "no JetStream stream takes the subject 'late.events'" in row["last_error"]

    await jetstream.add_stream(StreamConfig(name="LATE", subjects=["late.>"]))
    retried = await hub.post(f"/v1/deliveries/{row['id']}/retry")
    assert retried.status in (202, 404)  # 404: a retry already under way

    async def delivered() -> bool:
        return bool((await attempts(db, subscription["id"]))[0]["status"] == "delivered")

    await eventually(delivered, timeout_s=20)


async def test_rabbitmq_gets_persistent_signed_events_and_an_unbound_key_fails_then_recovers(
    hub: Client, db: asyncpg.Connection, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    exchange = await rabbit.declare_exchange("sms", aio_pika.ExchangeType.DIRECT)
    queue = await rabbit.declare_queue("", exclusive=True)
    await queue.bind(exchange, routing_key="events")
    bound = await subscribe(
        hub, {"kind": "rabbitmq", "name": "rabbit", "exchange": "sms", "routing_key": "events"}
    )
    unbound = await subscribe(
        hub, {"kind": "rabbitmq", "name": "rabbit", "exchange": "sms", "routing_key": "later"}
    )

    await report(hub, "amqp-1")

    message = await _one(queue)
    event = Webhook(bound["secret"]).verify(message.body, _headers(message))
    assert event["provider_message_id"] == "amqp-1"
    assert message.message_id == event["id"]
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT

    async def refused() -> bool:
        rows = await attempts(db, unbound["id"])
        return bool(rows) and rows[0]["last_error"] is not None

    await eventually(refused)
    [row] = await attempts(db, unbound["id"])
    assert "no queue bound to exchange 'sms' takes routing key 'later'" in row["last_error"]

    later = await rabbit.declare_queue("", exclusive=True)
    await later.bind(exchange, routing_key="later")
    await hub.post(f"/v1/deliveries/{row['id']}/retry")
    message = await _one(later)
    assert Webhook(unbound["secret"]).verify(message.body, _headers(message))["id"] == event["id"]


async def test_wrong_credentials_are_a_failed_attempt_saying_so_then_it_recovers(
    hub: Client, db: asyncpg.Connection, rabbit: aio_pika.abc.AbstractChannel
) -> None:
    queue = await rabbit.declare_queue("", exclusive=True)  # the default exchange reaches it
    where = {"kind": "rabbitmq", "name": "wrong", "exchange": "", "routing_key": queue.name}
    subscription = await subscribe(hub, where)
    await report(hub, "amqp-wrong")

    async def refused() -> bool:
        rows = await attempts(db, subscription["id"])
        return bool(rows) and rows[0]["last_error"] is not None

    await eventually(refused)
    [row] = await attempts(db, subscription["id"])
    assert row["last_error"].startswith("cannot connect to 'wrong'")
    assert "not-the-password" not in row["last_error"]

    # The operator points the subscription at the broker with the right credentials.
    fixed = await hub.patch(
        f"/v1/subscriptions/{subscription['id']}", json={"destination": where | {"name": "rabbit"}}
    )
    assert fixed.status == 200, await fixed.text()
    await hub.post(f"/v1/deliveries/{row['id']}/retry")
    message = await _one(queue)
    assert Webhook(subscription["secret"]).verify(message.body, _headers(message))["id"]


async def _one(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    for _ in range(100):
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.1)
    pytest.fail("nothing reached the queue")


def _headers(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, str]:
    return {
        name: value.decode() if isinstance(value, bytes) else str(value)
        for name, value in (message.headers or {}).items()
    }
