"""Reference handlers for `make bench`, mounted only by the bench's own serve (`python -m
bench.serve`, never by the product): the ceiling (read the body, answer 200) and the naive store
(one INSERT of the raw body), in the same app set-up as the real pipeline, so that the
benchmark's ratios compare like with like. The INSERT is the reference itself, which is why its
SQL is here and not in the hub's storage package."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web

from receiver.context import AppContext


async def ceiling(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"status": "ok"})


async def naive(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    body = await request.read()
    async with context.db.connection() as connection:
        await connection.execute(
            "INSERT INTO raw_callbacks (id, provider, method, path, body, received_at, outcome)"
            " VALUES ($1, 'bench', 'POST', '/bench/naive', $2, $3, 'unparsed')",
            uuid.uuid4(),
            body,
            datetime.now(UTC),
        )
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/bench/ceiling", ceiling)
    app.router.add_post("/bench/naive", naive)
