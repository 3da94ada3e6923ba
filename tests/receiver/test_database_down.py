"""With the database stopped, callbacks are answered 503 with Retry-After (the provider retries),
never 500; once it is back, callbacks are stored again without restarting the app."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg

from receiver.app import create_app
from receiver.config import Settings
from receiver.storage.migrate import apply_migrations, migrations_dir
from receiver.storage.pool import start_embedded_postgres

REPORT = {"message_sid": "down-1", "status": "delivered", "to": "15162065574"}


async def test_database_stopped_gives_503_then_recovers(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "pg"
    server = start_embedded_postgres(data_dir)
    dsn = str(server.get_uri())
    try:
        connection = await asyncpg.connect(dsn)
        await apply_migrations(connection, migrations_dir())
        await connection.close()
        settings = Settings(database_url=dsn, db_pool_min_size=0, retry_after_s=7)
        client = await aiohttp_client(create_app(settings, dsn))
        assert (await client.post("/callbacks/carrierx", json=REPORT)).status == 200

        server.cleanup()  # stops the server: this process holds its only handle

        down = await client.post("/callbacks/carrierx", json=REPORT | {"status": "sent"})
        assert down.status == 503
        assert down.headers["Retry-After"] == "7"
        assert (await down.json())["error"]["code"] == "database_unavailable"
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200

        server = start_embedded_postgres(data_dir)
        statuses = []
        for _ in range(20):  # bounded: the pool drops its dead connections within a few tries
            answer = await client.post("/callbacks/carrierx", json=REPORT | {"status": "sent"})
            statuses.append(answer.status)
            if answer.status == 200:
                break
            await asyncio.sleep(0.25)
        assert statuses[-1] == 200
        assert set(statuses) <= {200, 503}
        connection = await asyncpg.connect(dsn)
        rows = await connection.fetch("SELECT body FROM raw_callbacks ORDER BY received_at")
        await connection.close()
        assert [json.loads(bytes(r["body"]))["status"] for r in rows] == ["delivered", "sent"]
    finally:
        server.cleanup()
