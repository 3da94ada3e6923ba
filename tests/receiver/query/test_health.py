"""/healthz and /readyz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from receiver.app import create_app
from receiver.config import Settings
from receiver.storage.migrate import migrations_dir


async def test_healthz_answers_while_the_process_is_up(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_ok_with_a_migrated_database(client: TestClient[Any, Any]) -> None:
    response = await client.get("/readyz")

    assert response.status == 200
    assert (await response.json())["database"] == "ok"


async def test_readyz_is_503_while_a_migration_is_pending(
    aiohttp_client: Any, dsn: str, tmp_path: Path
) -> None:
    for migration in migrations_dir().glob("*.sql"):
        (tmp_path / migration.name).write_text(migration.read_text())
    (tmp_path / "9999_future.sql").write_text("SELECT 1;")
    settings = Settings(database_url=dsn, migrations_dir=tmp_path, db_pool_min_size=0)
    client = await aiohttp_client(create_app(settings, dsn))

    response = await client.get("/readyz")

    assert response.status == 503
    assert (await response.json())["pending_migrations"] == [9999]


async def test_every_answer_carries_a_request_id(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc123"})

    assert response.headers["X-Request-ID"] == "abc123"


async def test_an_unreasonable_request_id_is_replaced(client: TestClient[Any, Any]) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})

    assert len(response.headers["X-Request-ID"]) == 32
