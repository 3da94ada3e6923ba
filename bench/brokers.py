"""`make bench`'s E for each broker kind: the dispatcher (`sms-receiver worker`) publishing stored
events to one JetStream or RabbitMQ destination, against the ceiling of the same client library
publishing the same signed bodies with confirms from one process, 64 at once, no database."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import nats

from bench.fanout import SECRET, queue_all, seed_events, signed_bodies, worker_env
from faults.brokers import EXCHANGE, QUEUE, ROUTING_KEY, SUBJECT, broker_of

IN_FLIGHT = 64


async def delivered(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
        )
        return count
    finally:
        await connection.close()


async def scenario_eb(dsn: str, kind: str, events: int) -> dict[str, Any]:
    """The worker draining `events` deliveries to one broker destination."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as work:
        broker = broker_of(kind, Path(work))
        broker.server.start()
        try:
            await broker.prepare()
            await seed_events(dsn, events, [])
            connection = await asyncpg.connect(dsn)
            await connection.execute(
                "INSERT INTO subscriptions (id, url, destination, secret)"
                " VALUES ($1, NULL, $2::jsonb, $3)",
                uuid.uuid4(),
                json.dumps(broker.destination() | {"name": "bench"}),
                SECRET,
            )
            await connection.close()
            worker = subprocess.Popen(
                [sys.executable, "-m", "receiver", "worker"],
                env=worker_env(dsn) | {"DESTINATIONS__BENCH__URL": broker.server.url},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            await asyncio.sleep(3)  # the worker is up and idle before the clock starts
            await queue_all(dsn)
            started = time.perf_counter()
            deadline = time.monotonic() + 180
            done = 0
            try:
                while time.monotonic() < deadline:
                    done = await delivered(dsn)
                    if done >= events:
                        break
                    await asyncio.sleep(0.1)
                elapsed = time.perf_counter() - started
            finally:
                worker.terminate()
                worker.wait(timeout=30)
            seen = await broker.received()
        finally:
            broker.server.stop()
    return {
        "kind": kind,
        "deliveries": done,
        "rate": done / elapsed,
        "check_ok": done == events and len(seen) == events,
    }


async def scenario_eb0(kind: str, events: int) -> dict[str, Any]:
    """The client library alone: the same bodies published with confirms, 64 at once."""
    bodies = [(i, body.encode(), h) for i, body, h in signed_bodies(events, "evt_eb0")]
    limit = asyncio.Semaphore(IN_FLIGHT)
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}0-") as work:
        broker = broker_of(kind, Path(work))
        broker.server.start()
        try:
            await broker.prepare()
            if kind == "jetstream":
                client = await nats.connect(broker.server.url)
                stream = client.jetstream()

                async def publish(item: tuple[str, bytes, dict[str, str]]) -> None:
                    event_id, body, headers = item
                    async with limit:
                        await stream.publish(
                            SUBJECT, body, headers={**headers, "Nats-Msg-Id": event_id}
                        )

                started = time.perf_counter()
                await asyncio.gather(*(publish(item) for item in bodies))
                elapsed = time.perf_counter() - started
                await client.close()
            else:
                connection = await aio_pika.connect(broker.server.url)
                channel = await connection.channel(publisher_confirms=True)
                exchange = await channel.get_exchange(EXCHANGE)

                async def confirm(item: tuple[str, bytes, dict[str, str]]) -> None:
                    event_id, body, headers = item
                    async with limit:
                        await exchange.publish(
                            aio_pika.Message(
                                body,
                                message_id=event_id,
                                headers=dict(headers),
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            ),
                            routing_key=ROUTING_KEY,
                            mandatory=True,
                        )

                started = time.perf_counter()
                await asyncio.gather(*(confirm(item) for item in bodies))
                elapsed = time.perf_counter() - started
                await connection.close()
            seen = await broker.received()
        finally:
            broker.server.stop()
    return {
        "kind": kind,
        "deliveries": len(bodies),
        "rate": len(bodies) / elapsed,
        "check_ok": len(seen) == len(bodies),
        "queue": QUEUE if kind == "rabbitmq" else None,
    }
