"""GET /v1/messages[...]: what happened to a message, per recipient, with its event timeline."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
from aiohttp import web

from normalizers.events import Status, rfc3339
from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import asker_of
from receiver.http.errors import NotFound
from receiver.storage import events, messages
from receiver.storage.messages import is_pending
from receiver.storage.pool import Connection
from receiver.storage.tenants import Asker


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
        "provider_recipients": row["provider_recipients"],
        "send_at": rfc3339(row["send_at"]) if row["send_at"] else None,
        "expires_at": rfc3339(row["expires_at"]) if row["expires_at"] else None,
        "created_at": rfc3339(row["created_at"]),
        "tenant": row["tenant"],
        "routing": json.loads(row["routing"]) if row["routing"] else None,
    }


def recipients_json(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """One entry per recipient: its state (its latest attempt's, or delivered by an earlier
    one), the provider that carries it, and each attempt."""
    return [
        recipient_json(latest) | {"attempts": [attempt_json(row) for row in attempts]}
        for latest, attempts in messages.by_recipient(rows)
    ]


def attempt_json(row: asyncpg.Record) -> dict[str, Any]:
    pmid = row["provider_message_id"]
    return {
        "attempt": row["attempt"],
        "provider": row["provider"],
        "status": row["status"],
        "final": row["final"],
        "failure_kind": row["failure_kind"],
        "provider_message_id": None if is_pending(pmid) else pmid,
    }


def recipient_json(row: asyncpg.Record) -> dict[str, Any]:
    pmid = row["provider_message_id"]
    return {
        "to": row["recipient"] or None,
        "provider": row["provider"],
        "attempt": row["attempt"],
        "status": row["status"],
        "final": row["final"],
        "failure_kind": row["failure_kind"],
        "provider_message_id": None if is_pending(pmid) else pmid,
        "country": row["country"],
        "segments": row["segments"],
        "price": json.loads(row["price"]) if row["price"] else None,
        "sequence": row["sequence"],
        "updated_at": rfc3339(row["updated_at"]),
    }


async def message_view(
    connection: Connection, message_id: uuid.UUID, asker: Asker
) -> dict[str, Any] | None:
    """The message with its recipients and timeline; None when it is not the asker's."""
    row = await messages.message(connection, message_id, asker)
    if row is None:
        return None
    recipients = await messages.recipients_of_message(connection, message_id)
    return message_json(row) | {
        "recipients": recipients_json(recipients),
        "discrepancies": [
            discrepancy_json(found)
            for found in await messages.discrepancies_of(connection, message_id)
        ],
        "events": await events.timeline_of_message(connection, message_id, asker),
    }


def discrepancy_json(row: Any) -> dict[str, Any]:
    return {
        "kind": row["kind"],
        "provider": row["provider"],
        "details": json.loads(row["details"]),
        "event_id": row["event_id"],
        "found_at": row["found_at"].isoformat(),
    }


async def get_message(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    message_id = params.uuid_or_none(request.match_info["id"])
    if message_id is None:
        raise NotFound("no such message")
    async with context.read_db.connection() as connection:
        view = await message_view(connection, message_id, asker)
    if view is None:
        raise NotFound("no such message")
    return web.json_response(view)


async def by_provider_id(request: web.Request) -> web.Response:
    """The message a provider's id belongs to; or, when only its reports are known (orphans:
    the message was not sent through the hub, or its answer is still on its way), those: to
    the operator only, as they are nobody's yet."""
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    provider = request.match_info["provider"]
    pmid = request.match_info["provider_message_id"]
    async with context.read_db.connection() as connection:
        recipients = await messages.recipients_of_provider_id(connection, provider, pmid, asker)
        owner = next((r["message_id"] for r in recipients if r["message_id"]), None)
        if owner is not None:
            view = await message_view(connection, owner, asker)
            if view is not None:
                return web.json_response(view)
        if not recipients or not asker.is_operator:
            raise NotFound(f"nothing known of {provider} id {pmid!r}")
        timeline = await events.timeline_of_provider_id(connection, provider, pmid, asker)
    return web.json_response(
        {
            "id": None,
            "provider": provider,
            "orphan": True,
            "recipients": recipients_json(recipients),
            "events": timeline,
        }
    )


async def list_messages(request: web.Request) -> web.Response:
    """Newest first, keyset-paginated on (created_at, id)."""
    return web.json_response(await message_page(request))


async def message_page(request: web.Request) -> dict[str, Any]:
    """A page of the asker's messages as the request's parameters ask (the API's list and the
    console's)."""
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    limit = params.limit(request)
    status = params.choice(request, "status", {str(s) for s in Status})
    to = params.number(request, "to")
    cursor = params.parse_keyset_cursor(request)
    after = (cursor[0], uuid.UUID(cursor[1])) if cursor is not None else None
    ref = params.text(request, "ref")
    provider = params.choice(request, "provider", context.registry.keys())
    tenant = params.text(request, "tenant")
    since, until = params.moment(request, "since"), params.moment(request, "until")
    async with context.read_db.connection() as connection:
        rows = await messages.list_messages(
            connection,
            ref=ref,
            provider=provider,
            status=status,
            to=to,
            since=since,
            until=until,
            after=after,
            limit=limit + 1,
            asker=asker,
            tenant=tenant,
        )
        page = rows[:limit]
        recipients = await messages.recipients_of_messages(connection, [row["id"] for row in page])
    rows_of: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for recipient in recipients:
        rows_of.setdefault(recipient["message_id"], []).append(recipient)
    by_message = {message_id: recipients_json(rows) for message_id, rows in rows_of.items()}
    next_cursor = (
        params.keyset_cursor(page[-1]["created_at"], page[-1]["id"])
        if len(rows) > limit and page
        else None
    )
    return {
        "data": [message_json(row) | {"recipients": by_message.get(row["id"], [])} for row in page],
        "next_cursor": next_cursor,
    }
