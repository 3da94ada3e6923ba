"""GET /v1/raw-callbacks[/{id}]: every accepted provider request as it arrived, for the
operator (a tenant sees one only when every event it gave is that tenant's); values of
secret-looking headers, query and body fields shown redacted. GET /v1/callback-refusals: the
requests refused by authentication, as metadata."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from normalizers.events import rfc3339
from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import asker_of
from receiver.http.errors import NotFound
from receiver.redaction import REDACTED, is_secret_name, redacted
from receiver.storage import callbacks, events, refusals
from receiver.storage.callbacks import OUTCOMES

# In place of a JSON body nested too deeply to be searched for secrets (a stranger's garbage,
# stored `unparsed`): shown, it could reveal what the redaction is there to hide.
TOO_DEEP_TO_SHOW = "[not shown: JSON nested too deeply to redact]"


def _redacted_headers(headers: Any) -> list[list[str]]:
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    return [[name, REDACTED if is_secret_name(name) else value] for name, value in pairs]


def _redacted_query(query: str) -> str:
    pairs = parse_qsl(query.replace(";", "&"), keep_blank_values=True)
    return urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in pairs])


def _redacted_body(text: str) -> str:
    """Secret-looking fields of a JSON or form body, wherever they are."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(redacted(json.loads(stripped)))
        except ValueError:
            return text
        except RecursionError:  # nested deeper than it can be walked: nothing can be checked
            return TOO_DEEP_TO_SHOW
    if "=" in stripped and "\n" not in stripped:
        return _redacted_query(stripped)
    return text


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


async def raw_callbacks(request: web.Request) -> web.Response:
    return web.json_response(await raw_callback_page(request))


async def raw_callback_page(request: web.Request, outcome: str | None = None) -> dict[str, Any]:
    """A page of raw callbacks as the request's parameters ask, or of `outcome` alone (the
    API's list and the console's)."""
    context = request.app[AppContext.KEY]
    outcome = outcome or params.choice(request, "outcome", OUTCOMES)
    limit = params.limit(request)
    cursor = params.parse_keyset_cursor(request)
    provider = params.choice(request, "provider", context.registry.keys())
    async with context.read_db.connection() as connection:
        rows = await callbacks.list_raw_callbacks(
            connection,
            outcome=outcome,
            provider=provider,
            after=(cursor[0], uuid.UUID(cursor[1])) if cursor else None,
            limit=limit + 1,
        )
    page = rows[:limit]
    return {
        "data": [_raw_summary(row) for row in page],
        "next_cursor": (
            params.keyset_cursor(page[-1]["received_at"], str(page[-1]["id"]))
            if len(rows) > limit
            else None
        ),
    }


async def raw_callback(request: web.Request) -> web.Response:
    return web.json_response(await raw_callback_view(request))


async def raw_callback_view(request: web.Request) -> dict[str, Any]:
    """One raw callback as received, secrets redacted (the API's view and the console's). A
    tenant sees only one whose every event is its own: one that gave none (unparsed), or
    gave another tenant's or nobody's, is not found."""
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    raw_id = params.uuid_or_none(request.match_info["id"])
    if raw_id is None:
        raise NotFound("no such raw callback")
    async with context.read_db.connection() as connection:
        if not asker.is_operator:
            owners = await events.raw_owners(connection, raw_id)
            if owners != [asker.tenant]:
                raise NotFound("no such raw callback")
        row = await callbacks.raw_callback(connection, raw_id)
        stored_events = await events.events_of_raw(connection, raw_id)
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
    return (
        _raw_summary(row)
        | {
            "query": _redacted_query(row["query"]),
            "headers": _redacted_headers(json.loads(row["headers"])),
            "events": stored_events,
        }
        | shown
    )


async def callback_refusals(request: web.Request) -> web.Response:
    return web.json_response(await refusal_page(request))


async def refusal_page(request: web.Request) -> dict[str, Any]:
    """A page of refused callbacks (metadata), newest first (the API's list and the console's)."""
    context = request.app[AppContext.KEY]
    limit = params.limit(request)
    cursor = params.parse_keyset_cursor(request)
    provider = params.choice(request, "provider", context.registry.keys())
    async with context.read_db.connection() as connection:
        rows = await refusals.list_refusals(
            connection,
            provider=provider,
            after=(cursor[0], uuid.UUID(cursor[1])) if cursor else None,
            limit=limit + 1,
        )
    page = rows[:limit]
    return {
        "data": [
            {
                "id": str(row["id"]),
                "provider": row["provider"],
                "method": row["method"],
                "remote_addr": row["remote_addr"],
                "reason": row["reason"],
                "status": row["status"],
                "size_bytes": row["size_bytes"],
                "body_sha256": bytes(row["body_sha256"]).hex(),
                "received_at": rfc3339(row["received_at"]),
            }
            for row in page
        ],
        "next_cursor": (
            params.keyset_cursor(page[-1]["received_at"], str(page[-1]["id"]))
            if len(rows) > limit
            else None
        ),
    }
