"""GET /v1/stats: over a window (since, default the last 24 hours; until, default now), per
provider and per destination country: messages, delivery rate, final-report latency, the share
ended by a synthetic expiry, deliveries reported implausibly fast (fake DLRs), and per provider
reports by status and callbacks unparsed or refused. A tenant's key gets its own traffic (the
callbacks unparsed or refused are nobody's: the operator's figures alone)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from normalizers.events import rfc3339
from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import asker_of
from receiver.http.errors import BadRequest
from receiver.storage import stats as queries

# The longest window asked for: each question scans every message and event since `since`, and
# one reader must not hold the database with a scan of its whole history.
MAX_WINDOW = timedelta(days=31)
FAST_UNDER_MAX_S = 3600.0


async def stats(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    now = datetime.now(UTC)
    since = params.moment(request, "since", now - timedelta(days=1))
    until = params.moment(request, "until", None)
    if since is not None and since < now - MAX_WINDOW:
        raise BadRequest(f"since is at most {MAX_WINDOW.days} days ago")
    fast_under_s = params.seconds(
        request, "fast_under_s", context.settings.fast_delivery_s, high=FAST_UNDER_MAX_S
    )
    async with context.read_db.connection() as connection:
        by_provider = await queries.message_stats(connection, since, until, fast_under_s, asker)
        by_country = await queries.message_stats(
            connection, since, until, fast_under_s, asker, by="country"
        )
        reports = await queries.reports_by_status(connection, since, until, asker)
        raw = (
            await queries.unusable_callbacks(connection, since, until) if asker.is_operator else []
        )
    providers: dict[str, dict[str, Any]] = {name: _empty_stats() for name in context.registry}
    for row in by_provider:
        providers.setdefault(row["key"], _empty_stats()).update(_message_stats(row))
    for row in reports:
        entry = providers.setdefault(row["provider"], _empty_stats())
        entry["reports_by_status"][row["status"]] = row["n"]
    for row in raw:
        entry = providers.setdefault(row["provider"], _empty_stats())
        entry[f"{row['outcome']}_callbacks"] = row["n"]
    countries = {row["key"]: _message_stats(row) for row in by_country}
    return web.json_response(
        {
            "since": rfc3339(since) if since else None,
            "until": rfc3339(until) if until else None,
            "fast_under_s": fast_under_s,
            "providers": dict(sorted(providers.items())),
            "countries": dict(sorted(countries.items())),
        }
    )


def _message_stats(row: Any) -> dict[str, Any]:
    final = row["final"]
    return {
        "messages": row["messages"],
        "recipients": row["recipients"],
        "delivered": row["delivered"],
        "delivery_rate": round(row["delivered"] / final, 4) if final else None,
        "final_report_p50_s": _seconds(row["p50_s"]),
        "final_report_p95_s": _seconds(row["p95_s"]),
        "synthetic_expired": row["synthetic_expired"],
        "synthetic_expiry_share": round(row["synthetic_expired"] / final, 4) if final else None,
        "fast_deliveries": row["fast_deliveries"],
        "double_deliveries": row["double_deliveries"],
        "impossible_deliveries": row["impossible_deliveries"],
        "reports_before_send": row["reports_before_send"],
    }


def _empty_stats() -> dict[str, Any]:
    return {
        "messages": 0,
        "recipients": 0,
        "delivered": 0,
        "delivery_rate": None,
        "reports_by_status": {},
        "final_report_p50_s": None,
        "final_report_p95_s": None,
        "synthetic_expired": 0,
        "synthetic_expiry_share": None,
        "fast_deliveries": 0,
        "double_deliveries": 0,
        "impossible_deliveries": 0,
        "reports_before_send": 0,
        "unparsed_callbacks": 0,
        "rejected_callbacks": 0,
    }


def _seconds(value: Any) -> float | None:
    return round(float(value), 3) if value is not None else None
