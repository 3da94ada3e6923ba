"""The spool: callbacks that arrive while Postgres cannot take them are fsynced to a file and
acknowledged 202, then stored once it is back, exactly once."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from normalizers.registry import DEFAULT_REGISTRY
from receiver.app import create_app
from receiver.config import ProviderSettings, Settings
from receiver.context import AppContext
from receiver.ingest import pipeline
from receiver.ingest import spool as spool_module
from receiver.ingest.route import INGESTION
from receiver.ingest.spool import SPOOL_FILE, Spool, read, replay
from receiver.storage.callbacks import RawCallback
from receiver.storage.errors import DatabaseUnavailable
from receiver.storage.notify import Signal
from receiver.storage.pool import open_database
from tests.corpus import FIXTURES as CORPUS
from tests.helpers import free_port, running_serve
from tests.receiver.ingest.test_groupcommit import raw_callback

Client = TestClient[Any, Any]
FIXTURE = CORPUS / "carrierx" / "outbound_delivered.json"


@pytest.fixture
def settings(dsn: str, tmp_path: Path) -> Settings:
    return Settings(database_url=dsn, db_pool_min_size=0, spool_dir=tmp_path / "spool")


def carrierx_raw(sid: str) -> RawCallback:
    body = json.loads(FIXTURE.read_text())["request"]["body"] | {"message_sid": sid}
    return dataclasses.replace(
        raw_callback(),
        provider="carrierx",
        path="/callbacks/carrierx",
        headers=[("Content-Type", "application/json")],
        body=json.dumps(body).encode(),
    )


def database_down(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    ingestion = client.app[INGESTION]

    async def refused(*args: Any) -> Any:
        raise ConnectionRefusedError("the database is away")

    monkeypatch.setattr(ingestion.writer, "store", refused)


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
    spool = client.app[INGESTION].spool
    assert spool is not None
    stored = await replay(spool, context.db, DEFAULT_REGISTRY, settings, Signal())
    again = await replay(spool, context.db, DEFAULT_REGISTRY, settings, Signal())

    assert (stored, again) == (1, 0)
    # Replayed and removed: only the lock of the instance that holds the spool is left.
    assert [p.name for p in settings.spool_dir.iterdir()] == [spool_module.LOCK_FILE]
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
        assert await spool.append(raw)
    database = await open_database(dsn, settings)
    try:
        await replay(spool, database, DEFAULT_REGISTRY, settings, Signal())
        # The same file again, as if the process died before removing it.
        for raw in raws:
            assert await spool.append(raw)
        await replay(spool, database, DEFAULT_REGISTRY, settings, Signal())
    finally:
        await database.close()

    ids = {row["id"] for row in await db.fetch("SELECT id FROM raw_callbacks")}
    assert ids == {raw.id for raw in raws}


async def test_a_refused_callback_is_never_spooled(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        spool_dir=tmp_path / "spool",
        providers={"carrierx": ProviderSettings(callback_token=SecretStr("t" * 32))},
    )
    client: Client = await aiohttp_client(create_app(settings, dsn))
    body = json.loads(FIXTURE.read_text())["request"]["body"]

    async def refused(*args: Any) -> Any:
        raise ConnectionRefusedError("the database is away")

    client.app[INGESTION].writer.store = refused

    answer = await client.post("/callbacks/carrierx/wrong", json=body)

    assert answer.status == 401
    assert not (tmp_path / "spool" / SPOOL_FILE).exists()


async def test_a_refusal_spooled_by_an_earlier_version_is_dropped_not_stored(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    settings = Settings(database_url=dsn, db_pool_min_size=0)
    spool = Spool(tmp_path, 1024 * 1024)
    refused, accepted = raw_callback(), raw_callback()
    assert await spool.append(accepted)
    old_line = json.loads(spool_module._encode(refused)) | {
        "rejected": "missing or wrong callback token",
        "status": 401,
    }
    with spool.path.open("ab") as file:
        file.write(json.dumps(old_line).encode() + b"\n")
    database = await open_database(dsn, settings)
    try:
        stored = await replay(spool, database, DEFAULT_REGISTRY, settings, Signal())
    finally:
        await database.close()

    assert stored == 1
    assert [r["id"] for r in await db.fetch("SELECT id FROM raw_callbacks")] == [accepted.id]


async def test_a_full_spool_answers_retry_later(
    client: Client, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = client.app[INGESTION].spool
    assert spool is not None
    spool.max_bytes = 10  # nothing fits
    database_down(client, monkeypatch)

    answer = await client.post("/callbacks/carrierx", json={"message_sid": "x"})

    assert answer.status == 503
    assert answer.headers["Retry-After"]


async def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024 * 1024)
    raw = raw_callback()
    assert await spool.append(raw)
    with spool.path.open("ab") as file:
        file.write(b'{"id": "' + str(uuid.uuid4()).encode())  # a crash mid-write

    assert [entry.raw.id for entry in read(spool.path)] == [raw.id]


def test_without_a_spool_dir_there_is_no_spool(dsn: str) -> None:
    assert Settings(database_url=dsn).spool_dir is None


async def test_a_line_that_fails_for_another_reason_is_kept_unparsed_not_stuck(
    dsn: str, db: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=dsn, db_pool_min_size=0)
    spool = Spool(tmp_path, 1024 * 1024)
    poison, fine = carrierx_raw("poison"), carrierx_raw("fine")
    assert await spool.append(poison)
    assert await spool.append(fine)
    real = pipeline.store

    async def crashing(connection: Any, raw: Any, normalised: Any) -> Any:
        if raw.id == poison.id and normalised.outcome != "unparsed":
            raise RuntimeError("a bug in storing")
        return await real(connection, raw, normalised)

    monkeypatch.setattr(spool_module, "store", crashing)
    database = await open_database(dsn, settings)
    try:
        assert await replay(spool, database, DEFAULT_REGISTRY, settings, Signal()) == 2
    finally:
        await database.close()

    rows = {r["id"]: r for r in await db.fetch("SELECT id, outcome, error FROM raw_callbacks")}
    assert rows[poison.id]["outcome"] == "unparsed"
    assert "a bug in storing" in rows[poison.id]["error"]
    assert rows[fine.id]["outcome"] == "normalised"
    assert list(tmp_path.iterdir()) == []  # noqa: ASYNC240 - a test's own temporary folder


async def test_a_torn_tail_does_not_swallow_the_next_callback(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024 * 1024)
    first = raw_callback()
    assert await spool.append(first)
    with spool.path.open("ab") as file:  # a crash mid-write: never acknowledged
        file.write(b'{"id":"' + str(uuid.uuid4()).encode())

    acknowledged = raw_callback()
    assert await spool.append(acknowledged)

    assert [entry.raw.id for entry in read(spool.path)] == [first.id, acknowledged.id]


async def test_a_write_that_fails_half_way_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1024 * 1024)
    first = raw_callback()
    assert await spool.append(first)
    size = spool.path.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, hard))  # the disk is full
    try:
        assert not await spool.append(raw_callback())  # 503: nothing written
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    acknowledged = raw_callback()
    assert await spool.append(acknowledged)
    assert [entry.raw.id for entry in read(spool.path)] == [first.id, acknowledged.id]


async def test_the_bound_counts_the_files_being_replayed_too(tmp_path: Path) -> None:
    line = len(spool_module._encode(raw_callback()))
    spool = Spool(tmp_path, line * 3)
    accepted = 0
    for _round in range(5):  # an outage: every replay round moves the file aside, and fails
        for _ in range(3):
            accepted += await spool.append(raw_callback())
        spool.take()

    assert accepted == 3
    assert spool.size() <= spool.max_bytes


async def test_a_callback_that_cannot_be_stored_at_all_is_set_aside_not_blocking(
    dsn: str, db: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(database_url=dsn, db_pool_min_size=0)
    spool = Spool(tmp_path, 1024 * 1024)
    poison = raw_callback()
    assert await spool.append(poison)
    spool.take()
    later = [raw_callback() for _ in range(3)]
    for raw in later:
        assert await spool.append(raw)
    real = pipeline.store

    async def refusing(connection: Any, raw: Any, normalised: Any) -> Any:
        if raw.id == poison.id:
            raise DatabaseUnavailable("the callback could not be stored, retry later")
        return await real(connection, raw, normalised)

    monkeypatch.setattr(spool_module, "store", refusing)
    database = await open_database(dsn, settings)
    try:
        assert await replay(spool, database, DEFAULT_REGISTRY, settings, Signal()) == 3
    finally:
        await database.close()

    ids = {row["id"] for row in await db.fetch("SELECT id FROM raw_callbacks")}
    assert ids == {raw.id for raw in later}
    assert [entry.raw.id for entry in read(tmp_path / "failed.jsonl")] == [poison.id]


async def test_the_spool_is_only_the_hubs_users(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # a usual umask, which would leave files readable by all
    try:
        spool = Spool(tmp_path / "spool", 1024 * 1024)
        assert await spool.append(raw_callback())
        spool.set_aside(spool_module.read(spool.path)[0])
    finally:
        os.umask(previous)

    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    for name in (SPOOL_FILE, spool_module.FAILED_FILE):
        assert stat.S_IMODE((tmp_path / "spool" / name).stat().st_mode) == 0o600, name


def test_an_existing_spool_directory_is_closed_to_others(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir(mode=0o755)

    Spool(tmp_path / "spool", 1024).hold()

    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700


def test_a_second_serve_on_the_same_spool_refuses_to_start(dsn: str, tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": dsn,
        "SPOOL_DIR": str(tmp_path / "spool"),
        "API_AUTH": "false",
        "DISPATCHER": "false",
    }
    with running_serve(free_port(), env):
        second = subprocess.run(
            [sys.executable, "-m", "receiver", "serve", "--port", str(free_port())],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert second.returncode == 2
    assert "used by another running instance" in second.stderr
    assert "SPOOL_DIR of its own" in second.stderr
