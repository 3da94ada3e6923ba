"""The operator's view: inbound replies, raw callbacks (secrets redacted) and per-provider
statistics."""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from normalizers.events import rfc3339
from receiver import params
from receiver.apikeys import requires
from receiver.context import AppContext
from receiver.errors import BadRequest, NotFound
from receiver.outbox import EVENT_COLUMNS, event_json

OUTCOMES = ("normalised", "duplicate", "unparsed", "rejected")
# Header and query names whose values are secrets: shown as "[redacted]".
SECRET_NAME = re.compile(r"auth|sig|hmac|secret|token|key|cookie|pass|pwd|cred|session", re.I)
REDACTED = "[redacted]"


@requires("read")
async def inbound(request: web.Request) -> web.Response:
    """Inbound replies, newest first, each with the message it most likely answers: the latest
    one sent to that handset from the number it wrote to."""
    context = request.app[AppContext.KEY]
    limit = params.limit(request)
    after = params.parse_keyset_cursor(request)
    handset = params.number(request, "from")
    ours = params.number(request, "to")
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        rows = await conn.fetch(
            f"""
            SELECT {EVENT_COLUMNS}, e.stored_at, (
                SELECT m.id FROM messages m
                JOIN message_recipients r ON r.message_id = m.id
                WHERE r.recipient = e.sender AND m.sender = e.recipient
                  AND m.created_at <= e.received_at
                ORDER BY m.created_at DESC, m.id DESC LIMIT 1
            ) AS in_reply_to
            FROM events e
            WHERE e.type = 'message.inbound'
              AND ($1::text IS NULL OR e.provider = $1)
              AND ($2::text IS NULL OR e.sender = $2)
              AND ($3::text IS NULL OR e.recipient = $3)
              AND ($4::timestamptz IS NULL OR e.occurred_at >= $4)
              AND ($5::timestamptz IS NULL OR e.occurred_at < $5)
              AND ($6::timestamptz IS NULL OR (e.stored_at, e.id) < ($6, $7::text))
            ORDER BY e.stored_at DESC, e.id DESC
            LIMIT $8
            """,
            params.text(request, "provider"),
            handset,
            ours,
            params.moment(request, "since"),
            params.moment(request, "until"),
            after[0] if after else None,
            after[1] if after else None,
            limit + 1,
        )
    page = rows[:limit]
    return web.json_response(
        {
            "data": [
                event_json(row)
                | {"in_reply_to": str(row["in_reply_to"]) if row["in_reply_to"] else None}
                for row in page
            ],
            "next_cursor": (
                params.keyset_cursor(page[-1]["stored_at"], page[-1]["id"])
                if len(rows) > limit
                else None
            ),
        }
    )


def _redacted_headers(headers: Any) -> list[list[str]]:
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    return [[name, REDACTED if SECRET_NAME.search(name) else value] for name, value in pairs]


def _redacted_query(query: str) -> str:
    pairs = parse_qsl(query.replace(";", "&"), keep_blank_values=True)
    return urlencode([(k, REDACTED if SECRET_NAME.search(k) else v) for k, v in pairs])


def _redacted_body(text: str) -> str:
    """Secret-looking fields of a JSON or form body, wherever they are."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(_redacted_json(json.loads(stripped)))
        except ValueError:
            return text
    if "=" in stripped and "\n" not in stripped:
        return _redacted_query(stripped)
    return text


def _redacted_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: REDACTED if SECRET_NAME.search(str(k)) else _redacted_json(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redacted_json(item) for item in value]
    return value


def _raw_summary(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "provider": row["provider"],
        "source": row["source"],
        "method": row["method"],
        "path": row["path"],
        "outcome": row["outcome"],
        "error": row["error"],
        "event_count": row["event_count"],
        "remote_addr": row["remote_addr"],
        "received_at": rfc3339(row["received_at"]),
    }


@requires("admin")
async def raw_callbacks(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    outcome = params.text(request, "outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise BadRequest(f"outcome is one of {', '.join(OUTCOMES)}")
    limit = params.limit(request)
    after = params.parse_keyset_cursor(request)
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        rows = await conn.fetch(
            """
            SELECT id, provider, source, method, path, outcome, error, event_count, remote_addr,
                   received_at
            FROM raw_callbacks
            WHERE ($1::text IS NULL OR outcome = $1)
              AND ($2::text IS NULL OR provider = $2)
              AND ($3::timestamptz IS NULL OR (received_at, id) < ($3, $4::uuid))
            ORDER BY received_at DESC, id DESC
            LIMIT $5
            """,
            outcome,
            params.text(request, "provider"),
            after[0] if after else None,
            uuid.UUID(after[1]) if after and _is_uuid(after[1]) else None,
            limit + 1,
        )
    page = rows[:limit]
    return web.json_response(
        {
            "data": [_raw_summary(row) for row in page],
            "next_cursor": (
                params.keyset_cursor(page[-1]["received_at"], str(page[-1]["id"]))
                if len(rows) > limit
                else None
            ),
        }
    )


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


@requires("admin")
async def raw_callback(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    if not _is_uuid(request.match_info["id"]):
        raise NotFound("no such raw callback")
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        row = await conn.fetchrow(
            "SELECT * FROM raw_callbacks WHERE id = $1", uuid.UUID(request.match_info["id"])
        )
        events = await conn.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.raw_id = $1 ORDER BY e.feed_seq",
            uuid.UUID(request.match_info["id"]),
        )
    if row is None:
        raise NotFound("no such raw callback")
    body = bytes(row["body"])
    try:
        shown: dict[str, Any] = {
            "body": _redacted_body(body.decode("utf-8")),
            "body_encoding": "utf-8",
        }
    except UnicodeDecodeError:
        shown = {"body": base64.b64encode(body).decode(), "body_encoding": "base64"}
    return web.json_response(
        _raw_summary(row)
        | {
            "query": _redacted_query(row["query"]),
            "headers": _redacted_headers(json.loads(row["headers"])),
            "events": [event_json(event) for event in events],
        }
        | shown
    )


@requires("read")
async def stats(request: web.Request) -> web.Response:
    """Per provider since `since` (default: the last 24 hours)."""
    context = request.app[AppContext.KEY]
    since = params.moment(request, "since", datetime.now(UTC) - timedelta(days=1))
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        messages = await conn.fetch(
            """
            WITH recipients AS (
                SELECT m.provider, m.id AS message_id, r.id, r.status, r.final,
                       coalesce(m.send_at, m.created_at) AS created_at,
                       (SELECT min(e.received_at) FROM events e
                        JOIN raw_callbacks c ON c.id = e.raw_id AND c.source = 'callback'
                        WHERE e.recipient_id = r.id AND e.final) AS final_at
                FROM messages m JOIN message_recipients r ON r.message_id = m.id
                WHERE m.created_at >= $1
            )
            SELECT provider,
                   count(DISTINCT message_id) AS messages,
                   count(*) AS recipients,
                   count(*) FILTER (WHERE status = 'delivered') AS delivered,
                   count(*) FILTER (WHERE final) AS final,
                   percentile_cont(0.5) WITHIN GROUP (
                       ORDER BY extract(epoch FROM final_at - created_at)) AS p50_s,
                   percentile_cont(0.95) WITHIN GROUP (
                       ORDER BY extract(epoch FROM final_at - created_at)) AS p95_s
            FROM recipients GROUP BY provider
            """,
            since,
        )
        reports = await conn.fetch(
            "SELECT e.provider, e.status, count(*) AS n FROM events e"
            " JOIN raw_callbacks c ON c.id = e.raw_id AND c.source = 'callback'"
            " WHERE e.stored_at >= $1 AND e.type = 'message.status' AND NOT e.synthetic"
            " GROUP BY e.provider, e.status",
            since,
        )
        raw = await conn.fetch(
            "SELECT provider, outcome, count(*) AS n FROM raw_callbacks"
            " WHERE received_at >= $1 AND outcome IN ('unparsed', 'rejected')"
            " GROUP BY provider, outcome",
            since,
        )
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


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/inbound", inbound)
    app.router.add_get("/v1/raw-callbacks", raw_callbacks)
    app.router.add_get("/v1/raw-callbacks/{id}", raw_callback)
    app.router.add_get("/v1/stats", stats)
