"""Test set-up: one real Postgres for the session (embedded, or TEST_DATABASE_URL), a migrated
database in it, and clean tables for every test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from normalizers.registry import DEFAULT_REGISTRY, Registry
from receiver.app import create_app
from receiver.config import Settings
from receiver.storage.migrate import apply_migrations, migrations_dir
from receiver.storage.pool import start_embedded_postgres
from tests.helpers import free_port, running_serve, serve_env

REPO = Path(__file__).resolve().parent.parent

# Callbacks are refused when their provider has no authentication configured. Tests of other
# areas post callbacks without credentials: every provider is opened on purpose, in this process
# and in the serves it starts (tests/receiver/ingest/test_closed_by_default.py closes them).
for _name in DEFAULT_REGISTRY:
    os.environ.setdefault(f"{_name.upper()}__ALLOW_UNAUTHENTICATED", "true")
TABLES = (
    "deliveries, subscriptions, events, recipient_parts, message_recipients, messages,"
    " raw_callbacks, idempotency_keys, delivery_attempts, api_keys, callback_refusals,"
    " send_rate_buckets, send_quota_days, tenant_numbers, send_routes, send_route_changes,"
    " provider_health, opt_outs, help_replies, correction_runs, message_discrepancies"
)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(autouse=True)
def no_api_keys_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of other areas call the /v1 API without keys; test_apikeys turns them on."""
    monkeypatch.setenv("API_AUTH", "false")


@pytest.fixture(scope="session")
def admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server where the tests may create databases."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    server = start_embedded_postgres(tmp_path_factory.mktemp("pg") / "data")
    yield str(server.get_uri())
    server.cleanup()


async def create_database(admin_dsn: str, name: str) -> str:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def fresh_database(admin_dsn: str) -> AsyncIterator[str]:
    """An empty database of its own (no migrations), dropped afterwards."""
    name = f"smsr_fresh_{uuid.uuid4().hex[:10]}"
    dsn = await create_database(admin_dsn, name)
    yield dsn
    await drop_database(admin_dsn, name)


@pytest.fixture(scope="session")
async def dsn(admin_dsn: str) -> AsyncIterator[str]:
    """The migrated database most tests share; its tables are emptied before each test."""
    name = f"smsr_test_{os.getpid()}"
    database = await create_database(admin_dsn, name)
    connection = await asyncpg.connect(database)
    try:
        await apply_migrations(connection, migrations_dir())
    finally:
        await connection.close()
    yield database
    await drop_database(admin_dsn, name)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(dsn)
    await connection.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    # Tenants but the one every hub has, as the migration left it.
    await connection.execute("DELETE FROM tenants WHERE name <> 'default'")
    await connection.execute(
        "UPDATE tenants SET enabled = true, disabled_at = NULL, providers = NULL,"
        " send_rate_per_s = NULL, send_burst = NULL, daily_recipients = NULL"
    )
    yield connection
    await connection.close()


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings(database_url=dsn, db_pool_min_size=0, db_pool_max_size=5)


@pytest.fixture
def registry() -> Registry:
    return DEFAULT_REGISTRY


@pytest.fixture
async def client(
    aiohttp_client: Any, settings: Settings, dsn: str, registry: Registry, db: asyncpg.Connection
) -> TestClient[Any, Any]:
    app = create_app(settings, dsn, registry)
    test_client: TestClient[Any, Any] = await aiohttp_client(app)
    return test_client


@pytest.fixture(scope="module")
def served_hub(dsn: str) -> Iterator[str]:
    """A real `serve --sandbox` process on the test database, for black-box tests (contract,
    fuzzing); stopped at the end of the module."""
    port = free_port()
    env = serve_env(dsn, port, SEND_BURST="100000")
    with running_serve(port, env, "--sandbox") as url:
        yield url
