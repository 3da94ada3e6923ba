"""GET /v1/messages[...]: what happened to a message, per recipient, with its event timeline."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from normalizers.events import Status, rfc3339
from receiver import params
from receiver.apikeys import requires
from receiver.context import AppContext
from receiver.errors import BadRequest, NotFound
from receiver.outbox import EVENT_COLUMNS, event_json
from receiver.queries import Connection

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


@requires("read")
async def list_messages(request: web.Request) -> web.Response:
    """Newest first, keyset-paginated on (created_at, id)."""
    context = request.app[AppContext.KEY]
    limit = params.limit(request)
    status = params.text(request, "status")
    if status is not None and status not in {s.value for s in Status}:
        raise BadRequest(f"unknown status {status!r}")
    to = params.number(request, "to")
    after = params.parse_keyset_cursor(request)
    after_id = _uuid_or_none(after[1]) if after else None
    if after is not None and after_id is None:
        raise BadRequest("not a cursor")
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
            params.text(request, "ref"),
            params.text(request, "provider"),
            status,
            to,
            params.moment(request, "since"),
            params.moment(request, "until"),
            after[0] if after else None,
            after_id,
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
        params.keyset_cursor(page[-1]["created_at"], str(page[-1]["id"]))
        if len(rows) > limit and page
        else None
    )
    return web.json_response(
        {
            "data": [
                message_json(row) | {"recipients": by_message.get(row["id"], [])} for row in page
            ],
            "next_cursor": next_cursor,
        }
    )


def _uuid_or_none(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/messages", list_messages)
    app.router.add_get("/v1/messages/{id}", get_message)
    app.router.add_get(
        "/v1/messages/by-provider-id/{provider}/{provider_message_id}", by_provider_id
    )
