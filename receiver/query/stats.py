"""GET /v1/stats: per provider since a time (default: the last 24 hours), messages, delivery
rate, final-report latency, reports by status, and callbacks unparsed or rejected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from normalizers.events import rfc3339
from receiver.context import AppContext
from receiver.http import params
from receiver.http.errors import BadRequest
from receiver.storage import stats as queries

# The longest window asked for: each question scans every message and event since `since`, and
# one reader must not hold the database with a scan of its whole history.
MAX_WINDOW = timedelta(days=31)


async def stats(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    now = datetime.now(UTC)
    since = params.moment(request, "since", now - timedelta(days=1))
    if since is not None and since < now - MAX_WINDOW:
        raise BadRequest(f"since is at most {MAX_WINDOW.days} days ago")
    async with context.db.connection() as connection:
        messages = await queries.message_stats(connection, since)
        reports = await queries.reports_by_status(connection, since)
        raw = await queries.unusable_callbacks(connection, since)
    result: dict[str, dict[str, Any]] = {name: _empty_stats() for name in context.registry}
    for row in messages:
        result.setdefault(row["provider"], _empty_stats()).update(
            messages=row["messages"],
            recipients=row["recipients"],
            delivered=row["delivered"],
            delivery_rate=round(row["delivered"] / row["final"], 4) if row["final"] else None,
            final_report_p50_s=_seconds(row["p50_s"]),
            final_report_p95_s=_seconds(row["p95_s"]),
        )
    for row in reports:
        entry = result.setdefault(row["provider"], _empty_stats())
        entry["reports_by_status"][row["status"]] = row["n"]
    for row in raw:
        result.setdefault(row["provider"], _empty_stats())[f"{row['outcome']}_callbacks"] = row["n"]
    return web.json_response(
        {"since": rfc3339(since) if since else None, "providers": dict(sorted(result.items()))}
    )


def _empty_stats() -> dict[str, Any]:
    return {
        "messages": 0,
        "recipients": 0,
        "delivered": 0,
        "delivery_rate": None,
        "reports_by_status": {},
        "final_report_p50_s": None,
        "final_report_p95_s": None,
        "unparsed_callbacks": 0,
        "rejected_callbacks": 0,
    }


def _seconds(value: Any) -> float | None:
    return round(float(value), 3) if value is not None else None
