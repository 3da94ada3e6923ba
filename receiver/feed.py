"""GET /v1/events (the pull feed) and GET /v1/events/stream (Server-Sent Events): every stored
event once, in commit-safe order, resumable from a cursor."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from receiver import outbox
from receiver.context import AppContext
from receiver.errors import BadRequest

MAX_LIMIT = 1000
KEEPALIVE_S = 15.0


def parse_cursor(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    txid, _, seq = value.partition(".")
    if not (txid.isdigit() and seq.isdigit()):
        raise BadRequest(f"not a cursor: {value!r}")
    return int(txid), int(seq)


def cursor_of(row: Any) -> str:
    return f"{row['txid']}.{row['feed_seq']}"


async def events(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    after = parse_cursor(request.query.get("after"))
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), MAX_LIMIT)
    except ValueError:
        raise BadRequest("limit must be a number") from None
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        rows = await outbox.feed(
            conn, after, limit, request.query.get("type"), request.query.get("provider")
        )
    next_cursor = cursor_of(rows[-1]) if rows else request.query.get("after")
    return web.json_response(
        {
            "data": [outbox.event_json(row) | {"cursor": cursor_of(row)} for row in rows],
            "next_cursor": next_cursor,
        }
    )


async def stream(request: web.Request) -> web.StreamResponse:
    context = request.app[AppContext.KEY]
    after = parse_cursor(request.headers.get("Last-Event-ID") or request.query.get("after"))
    event_type, provider = request.query.get("type"), request.query.get("provider")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    stopping = request.app[STOPPING]
    while not stopping.is_set():
        wake = context.signal.current()
        async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
            rows = await outbox.feed(conn, after, 200, event_type, provider)
        for row in rows:
            event = outbox.event_json(row)
            payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
            await response.write(
                f"id: {cursor_of(row)}\nevent: {event['type']}\ndata: {payload}\n\n".encode()
            )
            after = (row["txid"], row["feed_seq"])
        if not rows:
            await response.write(b": keep-alive\n\n")
            await context.signal.wait(KEEPALIVE_S, wake)
    return response


# Set on shutdown, so that open streams end instead of holding the server up.
STOPPING = web.AppKey("feed_stopping", asyncio.Event)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/events/stream", stream)
