"""Partitions and retention: partitions exist ahead of need and no row of normal running lands in
a default partition; past its retention a partition is dropped whole; messages, recipients and
finished deliveries are retired in batches; one round at a time across instances."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from receiver.config import Settings
from receiver.storage import retention
from receiver.storage.migrate import apply_migrations, migrations_dir
from receiver.storage.pool import Database, open_database
from receiver.upkeep.retention import AHEAD, Upkeep
from tests.helpers import sandbox_hub

DELIVERED_NUMBER = "+447700900001"


@pytest.fixture
async def migrated(fresh_database: str) -> AsyncIterator[asyncpg.Connection]:
    """A database of its own (partitions are dropped here), migrated."""
    connection = await asyncpg.connect(fresh_database)
    await apply_migrations(connection, migrations_dir())
    yield connection
    await connection.close()


@pytest.fixture
async def database(fresh_database: str, migrated: asyncpg.Connection) -> AsyncIterator[Database]:
    settings = Settings(database_url=fresh_database, db_pool_min_size=0, db_pool_max_size=3)
    db = await open_database(fresh_database, settings)
    yield db
    await db.close()


def settings_for(dsn: str, **changes: Any) -> Settings:
    return Settings(database_url=dsn, db_pool_min_size=0, **changes)


async def partitions(connection: asyncpg.Connection, table: str) -> dict[str, tuple[Any, Any]]:
    rows = await connection.fetch("SELECT name, starts, ends FROM table_partitions($1)", table)
    return {row["name"]: (row["starts"], row["ends"]) for row in rows}


async def test_partitions_cover_the_week_ahead_after_migrating(
    migrated: asyncpg.Connection,
) -> None:
    week = datetime.now(UTC) + timedelta(days=7)
    for table in retention.PARTITIONED:
        covered = await migrated.fetchval(
            "SELECT bool_and(EXISTS (SELECT 1 FROM table_partitions($1) p"
            " WHERE p.starts <= t AND t < p.ends))"
            " FROM generate_series(now(), $2, interval '1 hour') AS t",
            table,
            week,
        )
        assert covered, table
        assert await migrated.fetchval(f"SELECT to_regclass('{table}_default')") is not None
        assert await migrated.fetchval(f"SELECT to_regclass('{table}_legacy')") is not None


async def test_a_round_makes_partitions_a_week_ahead_and_only_once(
    fresh_database: str, database: Database, migrated: asyncpg.Connection
) -> None:
    upkeep = Upkeep(database, settings_for(fresh_database))
    later = datetime.now(UTC) + timedelta(days=40)

    first = await upkeep.round(now=later)
    again = await upkeep.round(now=later)

    assert first.created["raw_callbacks"] == 8  # the day of `later` and the 7 after it
    assert first.created["delivery_attempts"] == 8
    assert first.created["events"] in (1, 2)  # the month of `later`, and the next if in reach
    assert sum(again.created.values()) == 0
    days = await partitions(migrated, "raw_callbacks")
    name = await migrated.fetchval("SELECT partition_name('raw_callbacks', $1)", later + AHEAD)
    assert name in days


async def test_normal_running_leaves_every_default_partition_empty(
    aiohttp_client: Any, aiohttp_server: Any, fresh_database: str, migrated: asyncpg.Connection
) -> None:
    received: list[bytes] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    sink = web.Application()
    sink.router.add_post("/hook", hook)
    server: TestServer = await aiohttp_server(sink)
    hub = await sandbox_hub(
        aiohttp_client,
        fresh_database,
        dispatcher=True,
        webhook_allowed_networks=("127.0.0.0/8",),
        webhook_poll_s=0.1,
    )
    created = await hub.post("/v1/subscriptions", json={"url": str(server.make_url("/hook"))})
    assert created.status == 201
    sent = await hub.post(
        "/v1/messages",
        json={
            "provider": "carrierx",
            "to": [DELIVERED_NUMBER],
            "from": "+447700900999",
            "body": "hi",
        },
    )
    assert sent.status == 201
    for _ in range(200):  # the report, its event, the webhook and its attempt
        if await migrated.fetchval("SELECT count(*) FROM delivery_attempts") >= 2:
            break
        await asyncio.sleep(0.1)

    for table in retention.PARTITIONED:
        assert await migrated.fetchval(f"SELECT count(*) FROM {table}") > 0, table
        assert await migrated.fetchval(f"SELECT count(*) FROM {table}_default") == 0, table
    # Until the cut (the hour after migrating) rows go to the legacy partition; after it, to the
    # partition of their day.
    later = datetime.now(UTC) + timedelta(hours=2)
    raw_id = uuid.uuid4()
    await migrated.execute(
        "INSERT INTO raw_callbacks (id, provider, method, path, body, received_at, outcome)"
        " VALUES ($1, 'swift', 'POST', '/x', '', $2, 'unparsed')",
        raw_id,
        later,
    )
    home = await migrated.fetchval(
        "SELECT tableoid::regclass::text FROM raw_callbacks WHERE id = $1", raw_id
    )
    assert home == await migrated.fetchval("SELECT partition_name('raw_callbacks', $1)", later)


async def test_partitions_past_retention_are_dropped_whole(
    fresh_database: str, database: Database, migrated: asyncpg.Connection
) -> None:
    await migrated.execute(
        "INSERT INTO raw_callbacks (id, provider, method, path, body, received_at, outcome)"
        " VALUES ($1, 'swift', 'POST', '/x', '', now() - interval '1 day', 'unparsed'),"
        " ($2, 'swift', 'POST', '/x', '', now(), 'unparsed')",
        uuid.uuid4(),
        uuid.uuid4(),
    )
    before = await partitions(migrated, "raw_callbacks")
    upkeep = Upkeep(database, settings_for(fresh_database, raw_retention_days=30))

    soon = await upkeep.round(now=datetime.now(UTC) + timedelta(days=29))
    assert [d for d in soon.dropped if d.table == "raw_callbacks"] == []

    # 31 days on, the legacy partition (everything before the migration) and today's have
    # ended more than 30 days ago; the later ones have not.
    later = await upkeep.round(now=datetime.now(UTC) + timedelta(days=31, hours=1))
    dropped = {d.partition for d in later.dropped if d.table == "raw_callbacks"}
    assert "raw_callbacks_legacy" in dropped
    today = await migrated.fetchval("SELECT partition_name('raw_callbacks', now())")
    # Migrated in the hour before midnight, today is the legacy partition's to its end.
    if await migrated.fetchval("SELECT to_regclass($1) IS NOT NULL", today):
        assert today in dropped
    assert set(before) - dropped  # the days after today's remain
    assert await migrated.fetchval("SELECT count(*) FROM raw_callbacks") == 0
    events_dropped = {d.partition for d in later.dropped if d.table == "events"}
    assert events_dropped == set()  # 90 days


async def test_messages_recipients_and_deliveries_are_retired_in_batches(
    fresh_database: str, database: Database, migrated: asyncpg.Connection
) -> None:
    old, young = uuid.uuid4(), uuid.uuid4()
    await migrated.execute(
        "INSERT INTO messages (id, provider, created_at, tenant) VALUES"
        " ($1, 'swift', now() - interval '100 days', 'default'), ($2, 'swift', now(), 'default')",
        old,
        young,
    )
    await migrated.execute(
        "INSERT INTO message_recipients"
        " (message_id, provider, provider_message_id, recipient, status, updated_at) VALUES"
        " ($1, 'swift', 'a', '+1', 'delivered', now() - interval '100 days'),"
        " ($2, 'swift', 'b', '+2', 'sent', now()),"
        " (NULL, 'swift', 'orphan-old', '+3', 'sent', now() - interval '100 days'),"
        " (NULL, 'swift', 'orphan-new', '+4', 'sent', now())",
        old,
        young,
    )
    subscription = uuid.uuid4()
    await migrated.execute(
        "INSERT INTO subscriptions (id, url, secret) VALUES ($1, 'http://127.0.0.1:9/x', 's')",
        subscription,
    )
    await migrated.execute(
        "INSERT INTO deliveries (subscription_id, event_id, status, created_at) VALUES"
        " ($1, 'e1', 'delivered', now() - interval '8 days'),"
        " ($1, 'e2', 'pending', now() - interval '8 days'),"
        " ($1, 'e3', 'failed', now() - interval '8 days'),"
        " ($1, 'e4', 'pending', now() - interval '91 days'),"
        " ($1, 'e5', 'delivered', now())",
        subscription,
    )

    done = await Upkeep(database, settings_for(fresh_database)).round()

    assert (done.messages, done.orphan_recipients) == (1, 1)
    left = await migrated.fetch("SELECT provider_message_id FROM message_recipients ORDER BY 1")
    assert [row[0] for row in left] == ["b", "orphan-new"]
    assert await migrated.fetchval("SELECT count(*) FROM messages") == 1
    # finished and older than 7 days, or older than the events' 90 days: gone; a pending one
    # still being retried stays
    assert done.deliveries == 3
    kept = await migrated.fetch("SELECT event_id FROM deliveries ORDER BY 1")
    assert [row[0] for row in kept] == ["e2", "e5"]


async def test_one_round_at_a_time_across_instances(
    fresh_database: str, database: Database, migrated: asyncpg.Connection
) -> None:
    await migrated.execute("SELECT pg_advisory_lock($1)", retention.UPKEEP_LOCK_KEY)
    try:
        done = await Upkeep(database, settings_for(fresh_database)).round()
    finally:
        await migrated.execute("SELECT pg_advisory_unlock($1)", retention.UPKEEP_LOCK_KEY)
    assert done.skipped
    assert (await Upkeep(database, settings_for(fresh_database)).round()).skipped is False
