"""The record of refused callbacks: metadata only, written in batches, bounded in memory, kept
while the database is away, retired after REFUSAL_RETENTION_DAYS."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from receiver.config import Settings
from receiver.ingest import refusals as refusals_module
from receiver.ingest.refusals import Refusals, refusal_of
from receiver.metrics import REFUSALS_DROPPED
from receiver.ratelimit import RateLimiter
from receiver.storage.pool import Database, open_database
from receiver.storage.refusals import Refusal, list_refusals, purge_refusals
from tests.receiver.ingest.test_groupcommit import raw_callback


@pytest.fixture
async def database(dsn: str) -> AsyncIterator[Database]:
    opened = await open_database(dsn, Settings(database_url=dsn, db_pool_min_size=0))
    yield opened
    await opened.close()


def refused(at: datetime | None = None) -> Refusal:
    raw = dataclasses.replace(raw_callback(), body=b'{"status": "delivered"}')
    refusal = refusal_of(raw, "missing or wrong callback token", 401)
    return dataclasses.replace(refusal, received_at=at) if at else refusal


def test_a_refusal_keeps_the_size_and_hash_of_the_body_not_the_body() -> None:
    raw = dataclasses.replace(raw_callback(), body=b"forged", query="token=abc")

    refusal = refusal_of(raw, "x" * 5000, 401)

    assert (refusal.size_bytes, refusal.body_sha256) == (6, hashlib.sha256(b"forged").digest())
    assert len(refusal.reason) == 2000  # bounded, as any stored reason
    assert not {"body", "headers", "query", "path"} & {f.name for f in dataclasses.fields(refusal)}


async def test_refusals_are_written_together_and_listed_newest_first(
    database: Database, db: asyncpg.Connection
) -> None:
    log = Refusals(database, RateLimiter(1.0, 100))
    now = datetime.now(UTC)
    for n in range(3):
        log.record(refused(now - timedelta(seconds=n)))

    assert await db.fetchval("SELECT count(*) FROM callback_refusals") == 0  # not yet
    assert await log.flush() == 3
    assert await log.flush() == 0  # nothing written twice

    async with database.connection() as connection:
        listed = await list_refusals(connection, provider=None, after=None, limit=2)
        rest = await list_refusals(
            connection,
            provider=None,
            after=(listed[-1]["received_at"], listed[-1]["id"]),
            limit=2,
        )
    assert [r["received_at"] for r in listed] == sorted(
        (r["received_at"] for r in listed), reverse=True
    )
    assert len(rest) == 1


async def test_while_the_database_is_away_refusals_wait_and_are_written_later(
    database: Database, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Refusals(database, RateLimiter(1.0, 100))
    log.record(refused())

    async def away(*args: object) -> None:
        raise ConnectionRefusedError("the database is away")

    monkeypatch.setattr(refusals_module, "insert_refusals", away)
    with pytest.raises(ConnectionRefusedError):
        await log.flush()
    monkeypatch.undo()

    assert await log.flush() == 1
    assert await db.fetchval("SELECT count(*) FROM callback_refusals") == 1


async def test_memory_is_bounded_and_what_is_dropped_is_counted(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(refusals_module, "MAX_PENDING", 2)
    log = Refusals(database, RateLimiter(1.0, 100))
    dropped_before = REFUSALS_DROPPED._value.get()

    for _ in range(5):
        log.record(refused())

    assert REFUSALS_DROPPED._value.get() - dropped_before == 3
    assert await log.flush() == 2


async def test_each_refusal_spends_its_source_budget(database: Database) -> None:
    log = Refusals(database, RateLimiter(rate_per_s=0.001, burst=2))

    assert log.wait_for("127.0.0.1") is None
    log.record(refused())
    log.record(refused())

    assert log.wait_for("127.0.0.1") is not None  # raw_callback() comes from 127.0.0.1
    assert log.wait_for("192.0.2.1") is None


async def test_refusals_past_their_retention_are_purged(
    database: Database, db: asyncpg.Connection
) -> None:
    log = Refusals(database, RateLimiter(1.0, 100))
    now = datetime.now(UTC)
    old, recent = refused(now - timedelta(days=31)), refused(now - timedelta(days=29))
    log.record(old)
    log.record(recent)
    await log.flush()

    async with database.connection() as connection:
        purged = await purge_refusals(connection, retention_days=30)

    assert purged == 1
    assert [r["id"] for r in await db.fetch("SELECT id FROM callback_refusals")] == [recent.id]
