"""GET|POST /callbacks/{provider}[/{token}]: store every authenticated provider request,
normalised or not, and answer only once it is committed; a refused one leaves only its metadata
(ingest.refusals)."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from aiohttp import web
from aiohttp.web_exceptions import HTTPExpectationFailed

from receiver.context import AppContext
from receiver.http.bodies import read_body
from receiver.http.clients import client_address
from receiver.http.errors import (
    AuthError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    error_body,
)
from receiver.ingest.auth import AuthFailure, ReplayGuard, authenticate, replay_of
from receiver.ingest.groupcommit import CallbackWriter
from receiver.ingest.refusals import Refusals, refusal_of
from receiver.ingest.spool import Spool
from receiver.judgement import judge
from receiver.metrics import CALLBACKS
from receiver.ratelimit import retry_after_header
from receiver.redaction import path_without_token
from receiver.storage.callbacks import UNPARSED, RawCallback, received_now
from receiver.storage.errors import is_database_unavailable
from receiver.storage.ids import time_ordered_uuid

log = structlog.get_logger("receiver.ingest.route")


@dataclass(slots=True)
class Ingestion:
    """What the callback route needs beyond the shared context, owned by the app's lifecycle."""

    writer: CallbackWriter  # stores callbacks, those arriving together in one transaction
    refusals: Refusals  # what was refused, and who is refused too often
    spool: Spool | None = None  # callbacks kept while Postgres cannot take them (SPOOL_DIR)
    replays: ReplayGuard = field(default_factory=ReplayGuard)  # signed callbacks stored lately


INGESTION = web.AppKey("ingestion", Ingestion)

REFUSED = "refused"  # the outcome counted for a callback refused by authentication


async def expect_within_limit(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: a body announced over the limit is refused before the client
    sends it, instead of being invited with `100 Continue` and then refused."""
    limit = request.app[AppContext.KEY].settings.body_limit_bytes
    if request.content_length is not None and request.content_length > limit:
        return web.json_response(
            error_body(
                "payload_too_large", f"body of {request.content_length} bytes is over {limit}"
            ),
            status=413,
        )
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise HTTPExpectationFailed(text=f"unknown Expect: {request.headers.get('Expect')}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


def _header_pairs(request: web.Request) -> list[tuple[str, str]]:
    return [
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for name, value in request.raw_headers
    ]


async def handle_callback(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    ingestion = request.app[INGESTION]
    provider_name = request.match_info["provider"]
    provider = context.registry.get(provider_name)
    if provider is None:
        raise NotFound(f"no provider named {provider_name!r}")
    structlog.contextvars.bind_contextvars(provider=provider_name)

    remote = client_address(request, context.settings.trusted_proxies)
    wait = ingestion.refusals.wait_for(remote)
    if wait is not None:  # refused too often: not even its body is read
        CALLBACKS.labels(provider_name, "refusals_limited").inc()
        raise TooManyRequests(
            "too many refused callbacks from this address", retry_after=retry_after_header(wait)
        )
    limit = context.settings.body_limit_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes is over {limit} bytes")
    body = await read_body(request)  # 400 if it breaks off or cannot be decoded, 408 if slow

    token = request.match_info.get("token")
    raw = RawCallback(
        id=time_ordered_uuid(),
        provider=provider_name,
        method=request.method,
        path=path_without_token(request.rel_url.raw_path, token),
        query=request.rel_url.raw_query_string,
        headers=_header_pairs(request),
        body=body,
        remote_addr=remote,
        received_at=received_now(),
    )
    config = context.settings.provider(provider_name)
    callback_request = raw.as_callback_request()
    failure = authenticate(
        provider, config, callback_request, token=token, remote=remote, now=raw.received_at
    )
    replay = replay_of(provider, config, callback_request) if failure is None else None
    if replay is not None and ingestion.replays.seen(provider_name, replay):
        failure = AuthFailure(401, "a replay of a signed callback already received")
    if failure is not None:
        ingestion.refusals.record(refusal_of(raw, failure.reason, failure.status))
        CALLBACKS.labels(provider_name, REFUSED).inc()
        structlog.contextvars.bind_contextvars(outcome=REFUSED, refusal_id=str(raw.id))
        log.warning("callback_refused", reason=failure.reason, remote=remote)
        raise _refusal(failure)
    normalised = judge(
        context.registry,
        raw,
        max_events=context.settings.max_events_per_callback,
        region=config.default_region,
    )
    try:
        result, kept_error = await ingestion.writer.store(raw, normalised)
    except Exception as error:
        # Only an outage (connection, timeout, server shutting down...): not the data refused,
        # not an overload (503 sheds it), which the spool would hide.
        if ingestion.spool is None or not is_database_unavailable(error):
            raise
        return await _spooled(ingestion.spool, raw, error)
    new_events = len(result.new_events)
    CALLBACKS.labels(provider_name, result.outcome).inc()
    structlog.contextvars.bind_contextvars(
        outcome=result.outcome, raw_id=str(raw.id), events=new_events
    )
    if replay is not None:
        ingestion.replays.remember(provider_name, replay)  # stored: the same again is a replay
    answer = {
        "status": result.outcome,
        "raw_id": str(raw.id),
        "events": new_events,
        "duplicates": len(result.events) - new_events,
    }
    if result.outcome == UNPARSED:
        log.warning("callback_unparsed", error=kept_error)
        answer["error"] = kept_error
        return web.json_response(answer, status=202)
    return web.json_response(answer, status=200)


async def _spooled(spool: Spool, raw: RawCallback, error: Exception) -> web.Response:
    """Postgres cannot take the callback now: kept in the spool (fsynced) and acknowledged, or,
    when the spool is full too, "retry later" as before."""
    if not await spool.append(raw):
        log.error("spool_full", raw_id=str(raw.id))
        raise error
    CALLBACKS.labels(raw.provider, "spooled").inc()
    structlog.contextvars.bind_contextvars(outcome="spooled", raw_id=str(raw.id))
    log.warning("callback_spooled", error=repr(error))
    return web.json_response({"status": "spooled", "raw_id": str(raw.id)}, status=202)


class CallbackAuthNotConfigured(AuthError):
    code = "callback_auth_not_configured"


def _refusal(failure: AuthFailure) -> Exception:
    """What a callback that failed authentication is answered: 403 for a source address not
    allowed, else 401."""
    if failure.status == 403:
        return Forbidden(failure.reason)
    if failure.code == CallbackAuthNotConfigured.code:
        return CallbackAuthNotConfigured(failure.reason)
    return AuthError(failure.reason)
