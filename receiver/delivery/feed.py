"""GET /v1/events (the pull feed) and GET /v1/events/stream (Server-Sent Events): every stored
event of the asker's (a tenant's own; every event for the operator) once, in commit-safe order,
resumable from a cursor."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from typing import Any

from aiohttp import web

from normalizers.events import EventType
from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import API_KEY, asker_of, caller_of
from receiver.http.errors import BadRequest, TooManyRequests
from receiver.storage.apikeys import ApiKey, still_valid
from receiver.storage.events import event_json, feed
from receiver.storage.tenants import Asker

KEEPALIVE_S = 15.0


CURSOR = re.compile(r"([0-9]{1,18})\.([0-9]{1,18})", re.ASCII)
# `after` and Last-Event-ID: a next_cursor (or an SSE event's id), or empty for the start.
CURSOR_SCHEMA = {"type": "string", "pattern": r"^([0-9]{1,18}\.[0-9]{1,18})?$"}
IDLE_POLL_S = 0.5  # an event hidden behind a transaction still running shows up this soon
KEY_RECHECK_S = 2.0  # a revoked key's (a disabled tenant's) stream ends within this


def parse_cursor(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    match = CURSOR.fullmatch(value)
    if match is None:
        raise BadRequest(f"not a cursor: {value[:60]!r}")
    return int(match[1]), int(match[2])


def _filters(request: web.Request, context: AppContext) -> tuple[str | None, str | None]:
    """The event type and provider filters, each one of the known values."""
    return (
        params.choice(request, "type", {str(kind) for kind in EventType}),
        params.choice(request, "provider", context.registry.keys()),
    )


def cursor_of(row: Any) -> str:
    return f"{row['txid']}.{row['feed_seq']}"


async def events(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    after = parse_cursor(request.query.get("after"))
    limit = params.limit(request, default=100)
    event_type, provider = _filters(request, context)
    async with context.db.connection() as connection:
        rows = await feed(connection, after, limit, event_type, provider, asker)
    next_cursor = cursor_of(rows[-1]) if rows else request.query.get("after")
    return web.json_response(
        {
            "data": [event_json(row) | {"cursor": cursor_of(row)} for row in rows],
            "next_cursor": next_cursor,
        }
    )


async def stream(request: web.Request) -> web.StreamResponse:
    """The stream, at most STREAMS_PER_KEY of them open at once per API key (per address
    without keys): each holds a connection and polls the database."""
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    caller = caller_of(request)
    open_streams = request.app[OPEN_STREAMS]
    limit = context.settings.streams_per_key
    if open_streams[caller] >= limit:
        raise TooManyRequests(
            f"{limit} event streams are open for this {caller.split()[0]} already",
            retry_after=str(int(KEEPALIVE_S)),
        )
    open_streams[caller] += 1
    try:
        return await _stream(request, context, request.get(API_KEY), asker)
    finally:
        open_streams[caller] -= 1
        if open_streams[caller] <= 0:
            del open_streams[caller]  # only callers with a stream open are remembered


async def _stream(
    request: web.Request, context: AppContext, key: ApiKey | None, asker: Asker
) -> web.StreamResponse:
    after = parse_cursor(request.headers.get("Last-Event-ID") or request.query.get("after"))
    event_type, provider = _filters(request, context)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    stopping = request.app[STOPPING]
    quiet_since = time.monotonic()
    checked_key_at = time.monotonic()
    try:
        while not stopping.is_set():
            if request.transport is None or request.transport.is_closing():
                break  # the client went away: its place (STREAMS_PER_KEY) is free within a poll
            if key is not None and time.monotonic() - checked_key_at >= KEY_RECHECK_S:
                async with context.db.connection() as connection:
                    if not await still_valid(connection, key.id):
                        break  # revoked, or its tenant disabled: the stream ends
                checked_key_at = time.monotonic()
            wake = context.signal.current()
            async with context.db.connection() as connection:
                rows = await feed(connection, after, 200, event_type, provider, asker)
            for row in rows:
                event = event_json(row)
                payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
                await response.write(
                    f"id: {cursor_of(row)}\nevent: {event['type']}\ndata: {payload}\n\n".encode()
                )
                after = (row["txid"], row["feed_seq"])
            if rows:
                quiet_since = time.monotonic()
                continue
            if time.monotonic() - quiet_since >= KEEPALIVE_S:
                await response.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
            await context.signal.wait(IDLE_POLL_S, wake)
    except ConnectionResetError:
        pass  # the client went away
    return response


# Set on shutdown, so that open streams end instead of holding the server up.
STOPPING = web.AppKey("feed_stopping", asyncio.Event)
# Event streams open now, per caller (this process's).
OPEN_STREAMS = web.AppKey("open_streams", Counter[str])
