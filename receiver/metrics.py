"""GET /metrics in Prometheus' text format: callbacks, events, request latency, callbacks per
transaction, the delivery queue, delivery attempts and the database pool."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from receiver.context import AppContext

CALLBACKS = Counter(
    "smsr_callbacks_total", "Provider callbacks by outcome.", ["provider", "outcome"]
)
EVENTS = Counter("smsr_events_total", "New events stored, by status.", ["provider", "status"])
REQUESTS = Histogram(
    "smsr_http_request_duration_seconds",
    "HTTP requests by route and status.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15),
)
INGEST_BATCHES = Histogram(
    "smsr_ingest_batch_callbacks",
    "Callbacks stored by one transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ATTEMPTS = Counter(
    "smsr_delivery_attempts_total", "Webhook delivery attempts by result.", ["result"]
)
QUEUE = Gauge("smsr_delivery_queue", "Deliveries waiting or under way.", ["status"])
POOL = Gauge("smsr_db_pool_connections", "Database pool connections.", ["state"])


async def metrics(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    try:
        async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
            rows = await conn.fetch(
                "SELECT status, count(*) AS n FROM deliveries"
                " WHERE status IN ('pending', 'delivering') GROUP BY status"
            )
        counts = {row["status"]: row["n"] for row in rows}
        for status in ("pending", "delivering"):
            QUEUE.labels(status).set(counts.get(status, 0))
    except Exception:  # metrics answer even while the database does not
        QUEUE.clear()
    POOL.labels("open").set(context.pool.get_size())
    POOL.labels("idle").set(context.pool.get_idle_size())
    POOL.labels("max").set(context.pool.get_max_size())
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
