"""/healthz (the process answers) and /readyz (the database answers and is migrated)."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from receiver.context import AppContext
from receiver.errors import is_database_unavailable


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    try:
        async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
            rows = await conn.fetch("SELECT version FROM schema_migrations")
        applied = {row["version"] for row in rows}
    except asyncpg.UndefinedTableError:
        applied = set()  # never migrated
    except Exception as error:
        if not is_database_unavailable(error):
            raise
        return web.json_response(
            {"status": "unavailable", "database": "unreachable", "error": type(error).__name__},
            status=503,
        )
    missing = sorted(context.expected_migrations - applied)
    if missing:
        return web.json_response(
            {"status": "unavailable", "database": "ok", "pending_migrations": missing},
            status=503,
        )
    return web.json_response({"status": "ok", "database": "ok"})
