"""POST /v1/messages: validate, remember the Idempotency-Key, store the message, call the
provider through its adapter (retrying only where its API makes that safe), store what it
answered, and say per recipient what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from normalizers.base import (
    OUTCOME_UNKNOWN,
    HttpRequest,
    HttpResponse,
    OptionsError,
    Provider,
    ProviderAccount,
    SendOutcome,
    SendRequest,
    not_sent,
    to_e164,
    unanswered,
)
from normalizers.encoding import segment
from normalizers.events import Event
from receiver import queries
from receiver.apikeys import API_KEY, requires
from receiver.bodies import read_body
from receiver.callbacks import received_now
from receiver.config import Settings
from receiver.context import AppContext
from receiver.errors import BadRequest, ReceiverError, TooManyRequests, error_body
from receiver.groupcommit import lost_conflict
from receiver.pipeline import NORMALISED, Normalised, store_callback
from receiver.queries import Connection, RawCallback
from receiver.ratelimit import retry_after_header

log = structlog.get_logger("receiver.sending")

# Calls to one provider at once for one message (fan-out providers take one recipient a call).
CALLS_AT_ONCE = 10
# Tries at storing a send answer that lost a lock conflict with concurrent callbacks.
STORE_ATTEMPTS = 3


class Unprocessable(ReceiverError):
    status = 422
    code = "validation_error"


class Conflict(ReceiverError):
    status = 409
    code = "idempotency_conflict"


@dataclasses.dataclass
class SendProgress:
    provider_called: bool = False


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


class SendMessageIn(BaseModel):
    """The body of POST /v1/messages."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    provider: str | None = None
    to: list[str] = Field(min_length=1, max_length=10_000)
    sender: str | None = Field(default=None, alias="from", max_length=64)
    body: str = Field(min_length=1, max_length=4096)
    ref: str | None = Field(default=None, max_length=255)
    send_at: datetime | None = None
    expires_at: datetime | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("to")
    @classmethod
    def e164_numbers(cls, numbers: list[str]) -> list[str]:
        cleaned = []
        for number in numbers:
            e164 = to_e164(number)
            if e164 is None or not e164.startswith("+") or not 8 <= len(e164) <= 16:
                raise ValueError(f"not an E.164 number: {number!r}")
            cleaned.append(e164)
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("a number is given twice")
        return cleaned

    @field_validator("send_at", "expires_at")
    @classmethod
    def with_zone(cls, moment: datetime | None) -> datetime | None:
        if moment is None:
            return None
        if moment.tzinfo is None:
            raise ValueError("needs a time zone (use Z for UTC)")
        if not EARLIEST <= moment <= LATEST:
            raise ValueError("must be between 1970 and 9999")
        return moment

    @field_validator("provider", "sender", "body", "ref")
    @classmethod
    def no_nul(cls, text: str | None) -> str | None:
        if text is not None and "\x00" in text:
            raise ValueError("must not contain a NUL character")
        return text


def account_of(settings: Settings, provider: str) -> ProviderAccount:
    config = settings.provider(provider)
    if config.base_url is None and settings.sandbox:
        # The simulated provider checks that credentials are given, not what they are.
        return ProviderAccount(
            base_url=f"{settings.public_base_url.rstrip('/')}/sandbox/{provider}",
            api_key="sandbox",
            account_sid="ACSANDBOX",
            property_sid="PSSANDBOX",
        )
    if config.base_url is None:
        raise BadRequest(f"no {provider.upper()}__BASE_URL is configured for sending")
    return ProviderAccount(
        base_url=config.base_url.rstrip("/"),
        api_key=config.api_key.get_secret_value() if config.api_key else None,
        account_sid=config.account_sid,
        property_sid=config.property_sid,
    )


def callback_url(settings: Settings, provider: str) -> str:
    token = settings.provider(provider).callback_token
    url = f"{settings.public_base_url.rstrip('/')}/callbacks/{provider}"
    return f"{url}/{token.get_secret_value()}" if token else url


@requires("send")
async def handle_send(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    settings = context.settings
    caller = f"key {request[API_KEY].id}" if API_KEY in request else f"address {request.remote}"
    wait_s = context.send_limiter.take(caller)
    if wait_s is not None:
        raise TooManyRequests(
            f"more than {settings.send_rate_per_s:g} requests per second (burst"
            f" {settings.send_burst}) for this {caller.split()[0]}",
            retry_after=retry_after_header(wait_s),
        )
    raw_body = await read_body(request)
    try:
        incoming = SendMessageIn.model_validate_json(raw_body)
    except ValidationError as error:
        raise Unprocessable("the request is not valid", details=_field_errors(error)) from None

    key = request.headers.get("Idempotency-Key")
    if key is None:
        status, answer = await _checked_send(context, incoming, None)
        return web.json_response(answer, status=status)
    if not 1 <= len(key) <= 255:
        raise BadRequest("Idempotency-Key must be 1 to 255 characters")
    # The key is claimed before anything that depends on time or configuration, so that a
    # replay answers what the first request answered, refusals included.
    request_hash = hashlib.sha256(
        json.dumps(incoming.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
    ).hexdigest()
    async with context.pool.acquire(timeout=settings.db_acquire_timeout_s) as connection:
        claim = await queries.claim_idempotency(
            connection, key, request_hash, settings.idempotency_ttl_s
        )
    if claim.state == "replay":
        return web.json_response(claim.body, status=claim.status or 200)
    if claim.state == "conflict":
        raise Conflict("this Idempotency-Key was used with another request body")
    if claim.state == "in_progress":
        raise Conflict("a request with this Idempotency-Key is still running")
    progress = SendProgress()
    try:
        status, answer = await _checked_send(context, incoming, key, progress)
    except ReceiverError as error:
        if error.status == 503:
            raise  # "retry later" is no answer to remember; the key is released below
        status, answer = error.status, error_body(error.code, error.message, error.details)
    except BaseException:
        # Once the provider has been called a retry could send the SMS twice: the key then
        # stays taken (409 until it expires). Before that, the key is free again.
        if not progress.provider_called:
            async with context.pool.acquire(timeout=settings.db_acquire_timeout_s) as conn:
                await queries.release_idempotency(conn, key)
        raise
    try:
        async with context.pool.acquire(timeout=settings.db_acquire_timeout_s) as connection:
            await queries.complete_idempotency(
                connection, key, status, answer, settings.idempotency_ttl_s
            )
    except Exception:
        log.exception("idempotency_answer_not_stored", key=key)
    return web.json_response(answer, status=status)


async def _checked_send(
    context: AppContext,
    incoming: SendMessageIn,
    key: str | None,
    progress: SendProgress | None = None,
) -> tuple[int, dict[str, Any]]:
    settings = context.settings
    name = incoming.provider or settings.default_provider
    if name is None:
        raise BadRequest("no provider given and no DEFAULT_PROVIDER configured")
    provider = context.registry.get(name)
    if provider is None:
        raise BadRequest(f"unknown provider {name!r}", details={"known": sorted(context.registry)})
    structlog.contextvars.bind_contextvars(provider=name)
    account = account_of(settings, name)
    message_id = uuid.uuid4()
    send = SendRequest(
        to=incoming.to,
        sender=incoming.sender,
        body=incoming.body,
        message_id=str(message_id),
        client_ref=incoming.ref,
        callback_url=callback_url(settings, name),
        send_at=incoming.send_at,
        expires_at=incoming.expires_at,
    )
    try:
        options = provider.validate_options(incoming.options, send, datetime.now(UTC))
    except OptionsError as error:
        raise Unprocessable("the options are not valid", details=error.details) from None
    send = dataclasses.replace(send, options=options)
    return await _send(
        context, provider, account, send, incoming, message_id, key, progress or SendProgress()
    )


async def _send(
    context: AppContext,
    provider: Provider,
    account: ProviderAccount,
    send: SendRequest,
    incoming: SendMessageIn,
    message_id: uuid.UUID,
    key: str | None,
    progress: SendProgress,
) -> tuple[int, dict[str, Any]]:
    settings = context.settings
    local = segment(send.body)
    async with context.pool.acquire(timeout=settings.db_acquire_timeout_s) as connection:
        await queries.create_message(
            connection,
            message_id,
            provider.name,
            send.to,
            sender=send.sender,
            body=send.body,
            client_ref=send.client_ref,
            segments=local.segments,
            encoding=local.encoding,
            request=incoming.model_dump(mode="json", by_alias=True),
            send_at=send.send_at,
            expires_at=send.expires_at,
            idempotency_key=key,
        )
    structlog.contextvars.bind_contextvars(message_id=str(message_id))
    calls = provider.build_send_request(send, account)
    limit = asyncio.Semaphore(CALLS_AT_ONCE)
    progress.provider_called = True
    stored = True

    # From here on the provider may have sent: whatever fails on our side, the client gets what
    # is known (never a "retry" that could send twice), and the log has what was not stored.
    async def one(call: HttpRequest) -> SendOutcome:
        nonlocal stored
        async with limit:
            outcome, answer = await call_provider(context, provider, account, call, send)
        try:
            await _store_outcome(context, provider, send, message_id, call, outcome, answer)
        except Exception:
            stored = False
            log.exception(
                "send_answer_not_stored",
                recipients=list(call.recipients),
                provider_ids=[e.provider_message_id for e in outcome.events],
                statuses=[str(e.status) for e in outcome.events],
            )
        return outcome

    outcomes = await asyncio.gather(*(one(call) for call in calls))
    context.signal.new_events()
    provider_segments = max((o.segments or 0 for o in outcomes), default=0) or None
    if provider_segments is not None and provider_segments != local.segments:
        log.warning("segment_count_differs", ours=local.segments, provider=provider_segments)
    recipients: list[dict[str, Any]] | None = None
    try:
        async with context.pool.acquire(timeout=settings.db_acquire_timeout_s) as connection:
            if provider_segments is not None:
                await queries.set_provider_segments(connection, message_id, provider_segments)
            rows = await queries.recipients_of(connection, message_id)
        recipients = [
            {
                "to": row["recipient"],
                "status": row["status"],
                "final": row["final"],
                "provider_message_id": row["provider_message_id"],
                "failure_kind": row["failure_kind"],
                "error_code": row["error_code"],
                "error_message": row["error_message"],
            }
            for row in rows
        ]
    except Exception:
        stored = False
        log.exception("message_state_not_read")
    if recipients is None or not stored:
        recipients = [_as_answered(event) for outcome in outcomes for event in outcome.events]
    answer: dict[str, Any] = {
        "id": str(message_id),
        "provider": provider.name,
        "segments": local.segments,
        "encoding": local.encoding,
        "provider_segments": provider_segments,
        "stored": stored,
        "recipients": recipients,
    }
    if all(outcome.refused for outcome in outcomes):
        first = outcomes[0]
        unknown = first.error_code == OUTCOME_UNKNOWN
        error = error_body(
            "provider_outcome_unknown" if unknown else "provider_refused",
            (
                f"{provider.name} did not answer usably: the message may or may not have been"
                " sent (do not send it again blindly; later reports are still recorded)"
                if unknown
                else f"{provider.name} refused the message"
            ),
            {
                "provider_error_code": first.error_code,
                "provider_error_message": first.error_message,
                "message": answer,
            },
        )
        return 502, error
    return 201, answer


def _as_answered(event: Event) -> dict[str, Any]:
    """A recipient as the provider's answer says, when the stored state cannot be read."""
    return {
        "to": event.recipient,
        "status": str(event.status),
        "final": event.final,
        "provider_message_id": event.provider_message_id,
        "failure_kind": event.failure_kind,
        "error_code": event.error_code,
        "error_message": event.error_message,
    }


async def call_provider(
    context: AppContext,
    provider: Provider,
    account: ProviderAccount,
    call: HttpRequest,
    send: SendRequest,
) -> tuple[SendOutcome, HttpResponse | None]:
    """The provider's answer to one call. It is tried again (bounded, with backoff) only when
    the answer itself says nothing was sent and a retry is safe (23 Telecom's DB_ERROR): a
    timeout, a lost connection or an unreadable answer may hide a sent message."""
    settings = context.settings
    url = account.base_url + call.path
    outcome: SendOutcome | None = None
    response: HttpResponse | None = None
    for attempt in range(1, settings.send_attempts + 1):
        started = time.perf_counter()
        response = None
        try:
            async with context.http.request(
                call.method,
                url,
                json=call.json_body,
                headers=dict(call.headers),
                timeout=aiohttp.ClientTimeout(total=settings.send_timeout_s),
                allow_redirects=False,
            ) as answer:
                response = HttpResponse(
                    status=answer.status, body=await answer.read(), headers=dict(answer.headers)
                )
            outcome = provider.parse_send_response(call, send, response, received_now())
        except aiohttp.ClientConnectorError as error:
            outcome = not_sent(provider.name, call, send, repr(error)[:500], received_now())
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = f"{type(error).__name__}: {error}"[:500]
            outcome = unanswered(provider.name, call, send, reason, received_now())
        except Exception as error:  # the adapter could not read the answer
            log.exception("send_answer_unreadable", path=call.path)
            reason = f"unreadable answer ({type(error).__name__}: {error})"[:500]
            outcome = unanswered(provider.name, call, send, reason, received_now())
        log.info(
            "provider_call",
            path=call.path,
            recipients=len(call.recipients),
            attempt=attempt,
            status=response.status if response else None,
            refused=outcome.refused,
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if not (outcome.refused and outcome.retry) or attempt == settings.send_attempts:
            break
        await asyncio.sleep(0.5 * 2 ** (attempt - 1) * (0.5 + random.random()))  # noqa: S311
    assert outcome is not None
    return outcome, response


async def _store_outcome(
    context: AppContext,
    provider: Provider,
    send: SendRequest,
    message_id: uuid.UUID,
    call: HttpRequest,
    outcome: SendOutcome,
    response: HttpResponse | None,
) -> None:
    """Give each recipient the provider's id, then store the answer and its events like a
    callback: the same state machine, the raw answer kept."""
    pending = queries.pending_id(message_id)
    raw = RawCallback(
        id=uuid.uuid4(),
        provider=provider.name,
        method=call.method,
        path=call.path,
        query="",
        headers=list(response.headers.items()) if response else [],
        body=response.body if response else b"",
        remote_addr=None,
        received_at=received_now(),
    )
    settings = context.settings
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            async with (
                context.pool.acquire(timeout=settings.db_acquire_timeout_s) as connection,
                connection.transaction(),
            ):
                await _store_answer(connection, provider, message_id, pending, raw, outcome)
            return
        except asyncpg.PostgresError as error:
            # Lost a lock conflict with concurrent callbacks (the transaction is undone, the
            # provider has answered): store it again rather than lose its ids.
            if not lost_conflict(error) or attempt == STORE_ATTEMPTS:
                raise
            log.warning("send_answer_store_retried", attempt=attempt, error=repr(error))


async def _store_answer(
    connection: Connection,
    provider: Provider,
    message_id: uuid.UUID,
    pending: str,
    raw: RawCallback,
    outcome: SendOutcome,
) -> None:
    events = []
    # In recipient key order, the order in which callbacks lock recipients too: a send
    # answer and a batch of callbacks sharing recipients queue instead of deadlocking.
    for event in sorted(outcome.events, key=_recipient_key):
        provider_id = event.provider_message_id
        if provider_id and event.recipient is not None:
            adopted = await queries.adopt_recipient(
                connection, message_id, provider.name, provider_id, event.recipient
            )
            if adopted is None:
                log.error(
                    "provider_id_reused",
                    provider_message_id=provider_id,
                    recipient=event.recipient,
                )
                provider_id = None
            elif adopted == 0:
                # Not one of the message's recipients (a CarrierX group handset): its
                # reports are kept under the provider's id, unattached.
                log.warning(
                    "recipient_not_in_message",
                    provider_message_id=provider_id,
                    recipient=event.recipient,
                )
        if provider_id is None:
            event = dataclasses.replace(event, provider_message_id=pending)
        events.append(event.stored_raw(str(raw.id)))
        part_ids = outcome.parts.get(event.recipient or "")
        if provider_id is not None and event.recipient is not None and part_ids:
            await queries.register_parts(
                connection, provider.name, provider_id, event.recipient, part_ids
            )
    await store_callback(connection, raw, Normalised(outcome=NORMALISED, events=events))
    await queries.mark_send_answer(connection, raw.id)


def _recipient_key(event: Event) -> tuple[str, str]:
    return (event.provider_message_id or "", event.recipient or "")


def _field_errors(error: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(part) for part in e["loc"]) or "body", "error": e["msg"]}
        for e in error.errors()
    ]
