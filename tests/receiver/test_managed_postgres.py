"""Managed Postgres: serve and worker run as a role that cannot change the schema (the
migrations applied once by an owner's role), refuse a schema they do not know, and send the
query endpoints to DATABASE_READ_URL (a replica)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from receiver.config import Settings
from receiver.storage.migrate import apply_migrations, load_migrations, migrations_dir
from receiver.storage.pool import open_database
from receiver.upkeep.retention import Upkeep
from tests.helpers import free_port, migrations_before, sandbox_hub

# What an operator grants the application's role (README, Production).
GRANTS = """
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
GRANT EXECUTE ON FUNCTION create_partitions(text, timestamptz, timestamptz),
    drop_partition(text, text), default_partition_has_rows(text) TO {role};
"""


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.fixture
async def app_role(fresh_database: str) -> AsyncIterator[str]:
    """A migrated database of its own, and the DSN of a role that may read and write its rows
    but not change its schema."""
    role = f"smsr_app_{uuid.uuid4().hex[:8]}"
    owner = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(owner, migrations_dir())
        await owner.execute(f"CREATE ROLE {role} LOGIN")
        await owner.execute(GRANTS.format(role=role))
        yield as_role(fresh_database, role)
        await owner.execute(f"DROP OWNED BY {role}")
        await owner.execute(f"DROP ROLE {role}")
    finally:
        await owner.close()


async def test_the_role_cannot_change_the_schema(app_role: str) -> None:
    connection = await asyncpg.connect(app_role)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("CREATE TABLE intruder (a int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute("DROP TABLE events_default")
        with pytest.raises(asyncpg.InvalidParameterValueError):
            await connection.execute("SELECT drop_partition('messages', 'messages')")
    finally:
        await connection.close()


async def test_the_hub_runs_as_a_role_without_ddl_rights(
    aiohttp_client: Any, app_role: str
) -> None:
    hub = await sandbox_hub(aiohttp_client, app_role)
    sent = await hub.post(
        "/v1/messages",
        json={
            "provider": "carrierx",
            "to": ["+447700900001"],
            "from": "+447700900999",
            "body": "hi",
        },
    )
    assert sent.status == 201
    message_id = (await sent.json())["id"]
    for _ in range(200):  # the simulated provider's reports, stored as the role
        view = await (await hub.get(f"/v1/messages/{message_id}")).json()
        if view["recipients"][0]["status"] == "delivered":
            break
        await asyncio.sleep(0.05)
    assert view["recipients"][0]["status"] == "delivered"

    # the upkeep makes and drops partitions through the owner's functions
    settings = Settings(database_url=app_role, db_pool_min_size=0)
    db = await open_database(app_role, settings)
    try:
        done = await Upkeep(db, settings).round(now=datetime.now(UTC) + timedelta(days=200))
    finally:
        await db.close()
    assert sum(done.created.values()) > 0
    assert {d.table for d in done.dropped} == {"events", "raw_callbacks", "delivery_attempts"}


def serve(dsn: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--port", str(free_port()), *options],
        env={**os.environ, "DATABASE_URL": dsn, "DB_CONNECT_RETRY_S": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_serve_without_migrating_refuses_a_schema_it_does_not_know(
    fresh_database: str, tmp_path: Path
) -> None:
    latest = load_migrations(migrations_dir())[-1]
    earlier = migrations_before(latest.version, tmp_path)
    connection = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(connection, earlier)
    finally:
        await connection.close()

    refused = await asyncio.to_thread(serve, fresh_database, "--no-migrate")

    assert refused.returncode == 2
    assert latest.name in refused.stderr
    assert "sms-receiver migrate" in refused.stderr


async def test_query_endpoints_read_from_database_read_url(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, fresh_database: str
) -> None:
    replica = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(replica, migrations_dir())
        await replica.execute(
            "INSERT INTO messages (id, provider, client_ref, tenant)"
            " VALUES ($1, 'swift', 'on-replica', 'default')",
            uuid.uuid4(),
        )
    finally:
        await replica.close()
    hub = await sandbox_hub(aiohttp_client, dsn, database_read_url=fresh_database)

    sent = await hub.post(
        "/v1/messages",
        json={
            "provider": "swift",
            "to": ["+447700900007"],
            "from": "+447700900999",
            "body": "hi",
            "ref": "on-primary",
        },
    )
    listed = await (await hub.get("/v1/messages")).json()

    assert sent.status == 201
    assert await db.fetchval("SELECT client_ref FROM messages") == "on-primary"  # written there
    assert [m["ref"] for m in listed["data"]] == ["on-replica"]  # read from the replica
