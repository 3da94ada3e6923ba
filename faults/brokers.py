"""`make faults`' broker scenarios: the load of callbacks runs while a subscription's broker
(NATS JetStream, or RabbitMQ) is stopped for 10 s and started again. Afterwards every event of
an acknowledged callback must be on the broker (compared by id): JetStream with no duplicate (its
window drops the hub's retries), RabbitMQ's duplicates counted (a confirm lost with the broker
is published again)."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import nats
from nats.js.api import StreamConfig

from tests.brokers.servers import NatsServer, RabbitServer

OUTAGE_S = 10.0
OUTAGE_AT_S = 5.0
SUBJECT = "faults.events"
EXCHANGE, ROUTING_KEY, QUEUE = "faults", "events", "faults-events"


class Broker:
    """One broker kind for the scenario: its server, its destination, how to read it back."""

    kind: str
    server: NatsServer | RabbitServer

    def destination(self) -> dict[str, str]:
        raise NotImplementedError

    async def prepare(self) -> None:
        raise NotImplementedError

    async def received(self) -> Counter[str]:
        raise NotImplementedError


class JetStreamBroker(Broker):
    kind = "jetstream"

    def __init__(self, directory: Path) -> None:
        self.server = NatsServer(directory)

    def destination(self) -> dict[str, str]:
        return {"kind": "jetstream", "name": "faults", "subject": SUBJECT}

    async def prepare(self) -> None:
        client = await nats.connect(self.server.url)
        await client.jetstream().add_stream(StreamConfig(name="FAULTS", subjects=[SUBJECT]))
        await client.close()

    async def received(self) -> Counter[str]:
        client = await nats.connect(self.server.url)
        stream = client.jetstream()
        consumer = await stream.pull_subscribe(SUBJECT, durable="check")
        seen: Counter[str] = Counter()
        while True:
            try:
                batch = await consumer.fetch(500, timeout=2)
            except TimeoutError:
                break
            for message in batch:
                seen[(message.headers or {}).get("webhook-id", "")] += 1
                await message.ack()
        await client.close()
        return seen


class RabbitBroker(Broker):
    kind = "rabbitmq"

    def __init__(self, directory: Path) -> None:
        self.server = RabbitServer(directory)

    def destination(self) -> dict[str, str]:
        return {
            "kind": "rabbitmq",
            "name": "faults",
            "exchange": EXCHANGE,
            "routing_key": ROUTING_KEY,
        }

    async def prepare(self) -> None:
        connection = await aio_pika.connect(self.server.url)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        queue = await channel.declare_queue(QUEUE, durable=True)
        await queue.bind(exchange, routing_key=ROUTING_KEY)
        await connection.close()

    async def received(self) -> Counter[str]:
        connection = await aio_pika.connect(self.server.url)
        channel = await connection.channel()
        queue = await channel.declare_queue(QUEUE, durable=True)
        seen: Counter[str] = Counter()
        while True:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                break
            seen[message.message_id or ""] += 1
        await connection.close()
        return seen


def broker_of(kind: str, directory: Path) -> Broker:
    return (
        JetStreamBroker(directory / "nats")
        if kind == "jetstream"
        else RabbitBroker(directory / "rabbit")
    )


async def outage(broker: Broker, notes: list[str]) -> None:
    await asyncio.sleep(OUTAGE_AT_S)
    broker.server.stop()
    stopped = time.monotonic()
    await asyncio.sleep(OUTAGE_S)
    broker.server.start()
    notes.append(
        f"{broker.kind} stopped at {OUTAGE_AT_S:.0f} s, back after"
        f" {time.monotonic() - stopped:.1f} s"
    )


async def scenario(
    kind: str,
    fresh_database: Callable[[str], Awaitable[str]],
    run_load: Callable[[str, dict[str, str], Callable[[list[str]], Awaitable[None]]], Any],
) -> dict[str, Any]:
    """The load against a hub whose only subscription is this broker's, the broker stopped for
    OUTAGE_S meanwhile; `run_load(dsn, env, fault)` runs the hub and the load and returns the
    acknowledged callbacks' provider ids."""
    with tempfile.TemporaryDirectory(prefix=f"faults-{kind}-") as work:
        broker = broker_of(kind, Path(work))
        broker.server.start()
        try:
            await broker.prepare()
            dsn = await fresh_database(f"faults_{kind}")
            connection = await asyncpg.connect(dsn)
            await connection.execute(
                "INSERT INTO subscriptions (id, url, destination, secret)"
                " VALUES ($1, NULL, $2::jsonb, $3)",
                uuid.uuid4(),
                json.dumps(broker.destination()),
                "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
            )
            await connection.close()
            notes: list[str] = []
            env = {"DESTINATIONS__FAULTS__URL": broker.server.url}
            acknowledged = await run_load(dsn, env, lambda _: outage(broker, notes))
            connection = await asyncpg.connect(dsn)
            rows = await connection.fetch(
                "SELECT id, provider_message_id FROM events WHERE provider = 'carrierx'"
            )
            left = await connection.fetchval(
                "SELECT count(*) FROM deliveries WHERE status <> 'delivered'"
            )
            await connection.close()
            event_of = {row["provider_message_id"]: row["id"] for row in rows}
            seen = await broker.received()
        finally:
            broker.server.stop()
    wanted = {event_of.get(sid, f"missing:{sid}") for sid in acknowledged}
    missing = sorted(wanted - set(seen))
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    ok = not missing and (kind != "jetstream" or duplicates == 0)
    return {
        "scenario": f"{kind} stopped {OUTAGE_S:.0f} s",
        "acknowledged": len(acknowledged),
        "on_the_broker": len(wanted & set(seen)),
        "missing": len(missing),
        "duplicates_on_the_broker": duplicates,
        "deliveries_left": left,
        "notes": notes,
        "ok": ok,
    }


def line(result: dict[str, Any]) -> str:
    return (
        f"{result['scenario']}: {result['acknowledged']} acknowledged, {result['on_the_broker']}"
        f" on the broker, {result['missing']} missing, {result['duplicates_on_the_broker']}"
        f" duplicates there  {'ok' if result['ok'] else 'FAILED'}"
    )
