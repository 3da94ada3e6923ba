"""The spool: callbacks that arrive while Postgres cannot take them are fsynced to a file and
acknowledged 202, then stored once it is back, exactly once."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from normalizers.registry import DEFAULT_REGISTRY
from receiver.config import Settings
from receiver.context import AppContext
from receiver.database import create_pool
from receiver.errors import DatabaseUnavailable
from receiver.signal import Signal
from receiver.spool import SPOOL_FILE, Spool, read, replay
from tests.receiver.test_groupcommit import raw_callback

Client = TestClient[Any, Any]
FIXTURE = Path(__file__).parent.parent / "fixtures" / "carrierx" / "outbound_delivered.json"


@pytest.fixture
def settings(dsn: str, tmp_path: Path) -> Settings:
    return Settings(database_url=dsn, db_pool_min_size=0, spool_dir=tmp_path / "spool")


def database_down(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    context = client.app[AppContext.KEY]

    async def refused(*args: Any) -> Any:
        raise ConnectionRefusedError("the database is away")

    monkeypatch.setattr(context.callbacks, "store", refused)


async def test_a_callback_is_spooled_while_the_database_is_down_then_stored_once(
    client: Client, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    body = json.loads(FIXTURE.read_text())["request"]["body"]
    database_down(client, monkeypatch)

    answer = await client.post("/callbacks/carrierx?x=1", json=body)

    assert answer.status == 202
    spooled = await answer.json()
    assert spooled["status"] == "spooled"
    assert settings.spool_dir is not None
    lines = read(settings.spool_dir / SPOOL_FILE)
    assert [str(entry.raw.id) for entry in lines] == [spooled["raw_id"]]
    assert lines[0].raw.query == "x=1"
    assert json.loads(lines[0].raw.body) == body
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 0

    context = client.app[AppContext.KEY]
    assert context.spool is not None
    stored = await replay(context.spool, context.pool, DEFAULT_REGISTRY, settings, Signal())
    again = await replay(context.spool, context.pool, DEFAULT_REGISTRY, settings, Signal())

    assert (stored, again) == (1, 0)
    assert list(settings.spool_dir.iterdir()) == []  # replayed, removed
    row = await db.fetchrow("SELECT id, outcome, query FROM raw_callbacks")
    assert row is not None
    assert (str(row["id"]), row["outcome"], row["query"]) == (
        spooled["raw_id"],
        "normalised",
        "x=1",
    )
    assert await db.fetchval("SELECT count(*) FROM events") == 1


async def test_a_replay_cut_short_stores_nothing_twice(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    settings = Settings(database_url=dsn, db_pool_min_size=0)
    spool = Spool(tmp_path, 1024 * 1024)
    raws = [raw_callback() for _ in range(3)]
    for raw in raws:
        assert await spool.append(raw, None, None)
    pool = await create_pool(dsn, settings)
    try:
        await replay(spool, pool, DEFAULT_REGISTRY, settings, Signal())
        # The same file again, as if the process died before removing it.
        for raw in raws:
            assert await spool.append(raw, None, None)
        await replay(spool, pool, DEFAULT_REGISTRY, settings, Signal())
    finally:
        await pool.close()

    ids = {row["id"] for row in await db.fetch("SELECT id FROM raw_callbacks")}
    assert ids == {raw.id for raw in raws}


async def test_a_rejected_callback_is_spooled_with_its_verdict(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    settings = Settings(database_url=dsn, db_pool_min_size=0)
    spool = Spool(tmp_path, 1024 * 1024)
    raw = raw_callback()
    assert await spool.append(raw, "missing or wrong callback token", 401)
    pool = await create_pool(dsn, settings)
    try:
        await replay(spool, pool, DEFAULT_REGISTRY, settings, Signal())
    finally:
        await pool.close()

    row = await db.fetchrow("SELECT outcome, error FROM raw_callbacks WHERE id = $1", raw.id)
    assert row is not None
    assert (row["outcome"], row["error"]) == ("rejected", "missing or wrong callback token")


async def test_a_full_spool_answers_retry_later(
    client: Client, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = client.app[AppContext.KEY]
    assert context.spool is not None
    context.spool.max_bytes = 10  # nothing fits
    database_down(client, monkeypatch)

    answer = await client.post("/callbacks/carrierx", json={"message_sid": "x"})

    assert answer.status == 503
    assert answer.headers["Retry-After"]


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024 * 1024)
    raw = raw_callback()
    assert await spool.append(raw, None, None)
    with spool.path.open("ab") as file:
        file.write(b'{"id": "' + str(uuid.uuid4()).encode())  # a crash mid-write

    assert [entry.raw.id for entry in read(spool.path)] == [raw.id]


def test_without_a_spool_dir_there_is_no_spool(dsn: str) -> None:
    assert Settings(database_url=dsn).spool_dir is None
    assert DatabaseUnavailable.status == 503
