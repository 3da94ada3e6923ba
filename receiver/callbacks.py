"""GET|POST /callbacks/{provider}: store every provider request, normalised or not, and answer
only once it is committed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import structlog
from aiohttp import web

from receiver.context import AppContext
from receiver.errors import AuthError, NotFound, PayloadTooLarge
from receiver.pipeline import REJECTED, UNPARSED, normalise, store_callback
from receiver.queries import RawCallback

log = structlog.get_logger("receiver.callbacks")


def received_now() -> datetime:
    """The receipt time at the precision events carry (milliseconds), so the raw row and its
    events hold the same instant."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def handle_callback(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    provider_name = request.match_info["provider"]
    provider = context.registry.get(provider_name)
    if provider is None:
        raise NotFound(f"no provider named {provider_name!r}")
    structlog.contextvars.bind_contextvars(provider=provider_name)

    limit = context.settings.body_limit_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes is over {limit} bytes")
    body = await request.read()

    raw = RawCallback(
        id=uuid.uuid4(),
        provider=provider_name,
        method=request.method,
        path=request.rel_url.raw_path,
        query=request.rel_url.raw_query_string,
        headers=dict(request.headers),
        body=body,
        remote_addr=request.remote,
        received_at=received_now(),
    )
    normalised = normalise(provider, raw)
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as connection:
        result, error = await store_callback(connection, raw, normalised)
    new_events = len(result.new_events)
    structlog.contextvars.bind_contextvars(
        outcome=result.outcome, raw_id=str(raw.id), events=new_events
    )
    if result.outcome == REJECTED:
        raise AuthError("callback authentication failed")
    answer = {
        "status": result.outcome,
        "raw_id": str(raw.id),
        "events": new_events,
        "duplicates": len(result.events) - new_events,
    }
    if result.outcome == UNPARSED:
        log.warning("callback_unparsed", error=error)
        answer["error"] = error
        return web.json_response(answer, status=202)
    return web.json_response(answer, status=200)
