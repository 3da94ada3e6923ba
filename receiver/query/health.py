"""How the hub is doing: /healthz (the process answers), /readyz (the database answers and is
migrated) and /metrics (Prometheus' text format)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from receiver.context import AppContext
from receiver.metrics import DISCREPANCIES, POOL, QUEUE
from receiver.storage.errors import is_database_unavailable
from receiver.storage.messages import discrepancy_counts
from receiver.storage.migrate import applied_versions
from receiver.storage.outbox import queue_counts


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    try:
        async with context.db.connection() as connection:
            applied = await applied_versions(connection)
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


async def metrics(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    try:
        async with context.db.connection() as connection:
            counts = await queue_counts(connection)
            found = await discrepancy_counts(connection)
        for status in ("pending", "delivering"):
            QUEUE.labels(status).set(counts.get(status, 0))
        DISCREPANCIES.clear()
        for (provider, kind), n in found.items():
            DISCREPANCIES.labels(provider, kind).set(n)
    except Exception:  # metrics answer even while the database does not
        QUEUE.clear()
        DISCREPANCIES.clear()
    pool = context.db.pool
    POOL.labels("open").set(pool.get_size())
    POOL.labels("idle").set(pool.get_idle_size())
    POOL.labels("max").set(pool.get_max_size())
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
