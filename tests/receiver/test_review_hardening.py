"""Inputs and failures that once gave a 500 or lost information: a read-only database, broken
bodies, repeated headers, `Expect: 100-continue`, and callbacks with too many events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from receiver.app import create_app
from receiver.config import Settings
from receiver.storage.migrate import apply_migrations, load_migrations, migrations_dir

Client = TestClient[Any, Any]
REPORT = {"message_sid": "h-1", "status": "delivered", "to": "15162065574"}


async def test_a_read_only_database_gives_503_not_500(
    aiohttp_client: Any, fresh_database: str
) -> None:
    connection = await asyncpg.connect(fresh_database)
    await apply_migrations(connection, migrations_dir())
    name = await connection.fetchval("SELECT current_database()")
    await connection.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    await connection.close()
    settings = Settings(database_url=fresh_database, db_pool_min_size=0)
    client = await aiohttp_client(create_app(settings, fresh_database))

    response = await client.post("/callbacks/carrierx", json=REPORT)

    assert response.status == 503
    assert response.headers["Retry-After"]


async def test_readyz_on_a_database_never_migrated(
    aiohttp_client: Any, fresh_database: str
) -> None:
    settings = Settings(database_url=fresh_database, db_pool_min_size=0)
    client = await aiohttp_client(create_app(settings, fresh_database))

    response = await client.get("/readyz")

    assert response.status == 503
    expected = [m.version for m in load_migrations(migrations_dir())]
    assert (await response.json())["pending_migrations"] == expected


async def test_a_body_that_cannot_be_decoded_is_400(client: Client, db: asyncpg.Connection) -> None:
    response = await client.post(
        "/callbacks/carrierx", data=b"hello", headers={"Content-Encoding": "gzip"}
    )

    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"


async def test_repeated_headers_are_all_kept(client: Client, db: asyncpg.Connection) -> None:
    response = await client.post(
        "/callbacks/carrierx",
        data=json.dumps(REPORT),
        headers=[("Content-Type", "application/json"), ("X-Dup", "one"), ("X-Dup", "two")],
    )

    assert response.status == 200
    headers = json.loads(await db.fetchval("SELECT headers FROM raw_callbacks"))
    assert ["X-Dup", "one"] in headers
    assert ["X-Dup", "two"] in headers


async def test_expect_continue_over_the_limit_is_refused_before_the_body(client: Client) -> None:
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /callbacks/carrierx HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()

    assert status_line.startswith(b"HTTP/1.1 413")


async def test_too_many_events_in_one_callback_are_kept_unparsed(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = Settings(database_url=dsn, db_pool_min_size=0, max_events_per_callback=2)
    client = await aiohttp_client(create_app(settings, dsn))
    group = REPORT | {"group_recipients": ["15162065576", "15162065577"]}

    response = await client.post("/callbacks/carrierx", json=group)

    assert response.status == 202
    assert "over the limit of 2" in (await response.json())["error"]
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "unparsed"
