"""GET /v1/messages[...]: what happened to a message, per recipient, with its event timeline."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from normalizers.base import parse_timestamp, to_e164
from normalizers.events import Status, rfc3339
from receiver.apikeys import requires
from receiver.context import AppContext
from receiver.errors import BadRequest, NotFound
from receiver.outbox import EVENT_COLUMNS, event_json
from receiver.queries import Connection

MAX_LIMIT = 500

MESSAGE_COLUMNS = """
    m.id, m.provider, m.sender, m.body, m.client_ref, m.segments, m.encoding,
    m.provider_segments, m.send_at, m.expires_at, m.created_at
"""


def message_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "provider": row["provider"],
        "from": row["sender"],
        "body": row["body"],
        "ref": row["client_ref"],
        "segments": row["segments"],
        "encoding": row["encoding"],
        "provider_segments": row["provider_segments"],
        "send_at": rfc3339(row["send_at"]) if row["send_at"] else None,
        "expires_at": rfc3339(row["expires_at"]) if row["expires_at"] else None,
        "created_at": rfc3339(row["created_at"]),
    }


def recipient_json(row: asyncpg.Record) -> dict[str, Any]:
    pmid = row["provider_message_id"]
    return {
        "to": row["recipient"] or None,
        "status": row["status"],
        "final": row["final"],
        "failure_kind": row["failure_kind"],
        "provider_message_id": None if pmid.startswith("pending:") else pmid,
        "segments": row["segments"],
        "price": json.loads(row["price"]) if row["price"] else None,
        "sequence": row["sequence"],
        "updated_at": rfc3339(row["updated_at"]),
    }


async def _recipients(conn: Connection, where: str, *args: Any) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT r.recipient, r.status, r.final, r.failure_kind, r.provider_message_id,"
        " r.segments, r.price, r.sequence, r.updated_at, r.message_id"
        f" FROM message_recipients r WHERE {where} ORDER BY r.id",
        *args,
    )
    return rows


async def _timeline(conn: Connection, where: str, *args: Any) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {EVENT_COLUMNS} FROM events e WHERE {where} ORDER BY e.occurred_at, e.feed_seq",
        *args,
    )
    return [event_json(row) for row in rows]


async def message_view(conn: Connection, message_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.id = $1", message_id
    )
    if row is None:
        return None
    recipients = await _recipients(conn, "r.message_id = $1", message_id)
    return message_json(row) | {
        "recipients": [recipient_json(r) for r in recipients],
        "events": await _timeline(conn, "e.message_id = $1", message_id),
    }


@requires("read")
async def get_message(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    try:
        message_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such message") from None
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        view = await message_view(conn, message_id)
    if view is None:
        raise NotFound("no such message")
    return web.json_response(view)


@requires("read")
async def by_provider_id(request: web.Request) -> web.Response:
    """The message a provider's id belongs to; or, when only its reports are known (orphans:
    the message was not sent through the hub, or its answer is still on its way), those."""
    context = request.app[AppContext.KEY]
    provider = request.match_info["provider"]
    pmid = request.match_info["provider_message_id"]
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        recipients = await _recipients(
            conn, "r.provider = $1 AND r.provider_message_id = $2", provider, pmid
        )
        owner = next((r["message_id"] for r in recipients if r["message_id"]), None)
        if owner is not None:
            view = await message_view(conn, owner)
            if view is not None:
                return web.json_response(view)
        if not recipients:
            raise NotFound(f"nothing known of {provider} id {pmid!r}")
        events = await _timeline(
            conn, "e.provider = $1 AND e.provider_message_id = $2", provider, pmid
        )
    return web.json_response(
        {
            "id": None,
            "provider": provider,
            "orphan": True,
            "recipients": [recipient_json(r) for r in recipients],
            "events": events,
        }
    )


def _cursor(created_at: datetime, message_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{message_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        moment = datetime.fromisoformat(stamp)
        return moment, uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("not a cursor") from None


def _text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and ("\x00" in value or len(value) > 255):
        raise BadRequest(f"{name} is not a valid value")
    return value


def _moment(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    if value is None:
        return None
    moment = parse_timestamp(value)
    if moment is None or not 1970 <= moment.year <= 9999:
        raise BadRequest(f"{name} must be an ISO 8601 time")
    return moment


@requires("read")
async def list_messages(request: web.Request) -> web.Response:
    """Newest first, keyset-paginated on (created_at, id)."""
    context = request.app[AppContext.KEY]
    try:
        limit = min(max(int(request.query.get("limit", "50")), 1), MAX_LIMIT)
    except ValueError:
        raise BadRequest("limit must be a number") from None
    status = _text(request, "status")
    if status is not None and status not in {s.value for s in Status}:
        raise BadRequest(f"unknown status {status!r}")
    to = _text(request, "to")
    if to is not None and to_e164(to) is None:
        raise BadRequest("to is not a phone number")
    after = _parse_cursor(request.query["cursor"]) if request.query.get("cursor") else None
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        rows = await conn.fetch(
            f"""
            SELECT {MESSAGE_COLUMNS} FROM messages m
            WHERE ($1::text IS NULL OR m.client_ref = $1)
              AND ($2::text IS NULL OR m.provider = $2)
              AND ($3::text IS NULL OR EXISTS (
                    SELECT 1 FROM message_recipients r WHERE r.message_id = m.id AND r.status = $3))
              AND ($4::text IS NULL OR EXISTS (
                    SELECT 1 FROM message_recipients r WHERE r.message_id = m.id
                    AND r.recipient = $4))
              AND ($5::timestamptz IS NULL OR m.created_at >= $5)
              AND ($6::timestamptz IS NULL OR m.created_at < $6)
              AND ($7::timestamptz IS NULL OR (m.created_at, m.id) < ($7, $8::uuid))
            ORDER BY m.created_at DESC, m.id DESC
            LIMIT $9
            """,
            _text(request, "ref"),
            _text(request, "provider"),
            status,
            to_e164(to) if to else None,
            _moment(request, "since"),
            _moment(request, "until"),
            after[0] if after else None,
            after[1] if after else None,
            limit + 1,
        )
        page = rows[:limit]
        recipients = await conn.fetch(
            "SELECT r.recipient, r.status, r.final, r.failure_kind, r.provider_message_id,"
            " r.segments, r.price, r.sequence, r.updated_at, r.message_id"
            " FROM message_recipients r WHERE r.message_id = ANY($1::uuid[]) ORDER BY r.id",
            [row["id"] for row in page],
        )
    by_message: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for recipient in recipients:
        by_message.setdefault(recipient["message_id"], []).append(recipient_json(recipient))
    next_cursor = (
        _cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit and page else None
    )
    return web.json_response(
        {
            "data": [
                message_json(row) | {"recipients": by_message.get(row["id"], [])} for row in page
            ],
            "next_cursor": next_cursor,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/messages", list_messages)
    app.router.add_get("/v1/messages/{id}", get_message)
    app.router.add_get(
        "/v1/messages/by-provider-id/{provider}/{provider_message_id}", by_provider_id
    )
