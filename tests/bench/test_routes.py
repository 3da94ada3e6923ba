"""The reference handlers of `make bench`: never in the product, mounted by the bench's serve."""

from __future__ import annotations

from typing import Any

import asyncpg

from bench import routes
from receiver.app import create_app
from receiver.config import Settings


async def test_the_product_has_no_bench_routes(client: Any) -> None:
    assert (await client.post("/bench/ceiling", data=b"x")).status == 404


async def test_the_ceiling_answers_and_the_naive_route_stores(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    app = create_app(Settings(database_url=dsn, db_pool_min_size=0), dsn)
    routes.add_routes(app)  # as `python -m bench.serve` does
    client = await aiohttp_client(app)

    assert (await client.post("/bench/ceiling", data=b'{"a": 1}')).status == 200
    assert (await client.post("/bench/naive", data=b'{"a": 1}')).status == 200

    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 1
    assert bytes(await db.fetchval("SELECT body FROM raw_callbacks")) == b'{"a": 1}'
