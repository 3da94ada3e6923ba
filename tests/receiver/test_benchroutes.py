"""The reference handlers of `make bench` (mounted only with BENCH_ROUTES=true)."""

from __future__ import annotations

from typing import Any

import asyncpg

from receiver.app import create_app
from receiver.config import Settings


async def test_bench_routes_are_off_by_default(client: Any) -> None:
    assert (await client.post("/bench/ceiling", data=b"x")).status == 404


async def test_the_ceiling_answers_and_the_naive_route_stores(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = Settings(database_url=dsn, db_pool_min_size=0, bench_routes=True)
    client = await aiohttp_client(create_app(settings, dsn))

    assert (await client.post("/bench/ceiling", data=b'{"a": 1}')).status == 200
    assert (await client.post("/bench/naive", data=b'{"a": 1}')).status == 200

    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 1
    assert bytes(await db.fetchval("SELECT body FROM raw_callbacks")) == b'{"a": 1}'
