"""Calling a provider's send API through its adapter (retrying only where nothing was sent:
429 after its Retry-After, 500/502/503, a refused connection), and storing what it answered
like a callback: the same state machine, the raw answer kept."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import asyncpg
import structlog

from normalizers.base import (
    OUTCOME_UNKNOWN,
    RATE_LIMITED,
    HttpRequest,
    HttpResponse,
    Provider,
    ProviderAccount,
    SendOutcome,
    SendRequest,
    not_sent,
    rate_limited,
    unanswered,
)
from normalizers.events import Event
from receiver.config import Settings
from receiver.context import AppContext
from receiver.http.errors import BadRequest
from receiver.judgement import normalizer_version
from receiver.storage import callbacks, messages
from receiver.storage.callbacks import NORMALISED, RawCallback, received_now
from receiver.storage.errors import lost_conflict
from receiver.storage.pool import Connection

log = structlog.get_logger("receiver.sending.providers")

# Tries at storing a send answer that lost a lock conflict with concurrent callbacks.
STORE_ATTEMPTS = 3


def is_simulated(settings: Settings, provider: str) -> bool:
    """Whether sends to this provider go to its simulated one (`--sandbox`, no BASE_URL)."""
    return settings.sandbox and settings.provider(provider).base_url is None


def can_send(settings: Settings, provider: str) -> bool:
    """Whether sends to this provider have somewhere to go (its simulated one, or BASE_URL)."""
    return is_simulated(settings, provider) or settings.provider(provider).base_url is not None


def account_of(settings: Settings, provider: str) -> ProviderAccount:
    config = settings.provider(provider)
    if is_simulated(settings, provider):
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


async def call_provider(
    context: AppContext,
    provider: Provider,
    account: ProviderAccount,
    call: HttpRequest,
    send: SendRequest,
) -> tuple[SendOutcome, HttpResponse | None]:
    """The provider's answer to one call. Tried again only where nothing was sent: a 429 after
    the delay it advises, within SEND_RETRY_BUDGET_S (then the recipients are `failed`,
    temporary); a 500/502/503, a refused connection or an answer saying a retry is safe (23
    Telecom's DB_ERROR) up to SEND_ATTEMPTS times with backoff. A timeout, a connection lost
    mid-request, a 504 or an unreadable answer may hide a sent message: not retried."""
    settings = context.settings
    url = account.base_url + call.path
    throttled_s = 0.0  # waited so far for 429s
    throttled = 0
    attempt = 1
    while True:
        started = time.perf_counter()
        response: HttpResponse | None = None
        unreachable = False
        try:
            async with context.http.request(
                call.method,
                url,
                json=call.json_body,
                headers=dict(call.headers),
                # A connection not made in time is a request never sent (failed over at once),
                # told apart from a timeout after sending, which may hide a sent message.
                timeout=aiohttp.ClientTimeout(
                    total=settings.send_timeout_s,
                    sock_connect=min(CONNECT_TIMEOUT_S, settings.send_timeout_s),
                ),
                allow_redirects=False,
            ) as answer:
                response = HttpResponse(
                    status=answer.status, body=await answer.read(), headers=dict(answer.headers)
                )
            outcome = provider.parse_send_response(call, send, response, received_now())
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            unreachable = True
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
        if response is not None and response.status == THROTTLED:
            throttled += 1
            # At least the backoff: a Retry-After of 0, again and again, cannot spin.
            wait = max(retry_after_s(response.headers) or 0.0, _backoff(throttled))
            if throttled_s + wait > settings.send_retry_budget_s:
                reason = (
                    f"the provider answered 429 {throttled} times; SEND_RETRY_BUDGET_S"
                    f" ({settings.send_retry_budget_s:g} s) spent"
                )
                return rate_limited(provider.name, call, send, reason, received_now()), response
            throttled_s += wait
            await asyncio.sleep(wait)
            continue  # a 429 is not one of the SEND_ATTEMPTS: nothing was tried
        retry = (
            unreachable
            or (response is not None and response.status in RETRYABLE_STATUSES)
            or (outcome.refused and outcome.retry)
        )
        if not retry or attempt >= settings.send_attempts:
            return outcome, response
        await asyncio.sleep(_backoff(attempt))
        attempt += 1


THROTTLED = 429
# Seconds to make the connection: past it, nothing was sent.
CONNECT_TIMEOUT_S = 5.0
# Answers that say the provider did not take the request (its server or gateway failed before
# it): safe to send again. Not a 504: the gateway gave up waiting for a server that may have
# sent the message, as a timeout may hide a sent one.
RETRYABLE_STATUSES = frozenset({500, 502, 503})


def _backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s... with jitter."""
    return float(0.5 * 2 ** (attempt - 1) * (0.5 + random.random()))  # noqa: S311


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """A Retry-After header's delay in seconds (a number of seconds or an HTTP date), if it
    has a readable one."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), "").strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def failover_reason(
    outcome: SendOutcome, response: HttpResponse | None, *, on_timeout: bool
) -> str | None:
    """Why a refused call's recipients may go to the next provider of their route: the refusal
    is about the provider, not the message (which any other provider would refuse too). A
    timeout after the request was sent may hide a sent message: only when the route accepts
    that risk (`failover_on_timeout`)."""
    if not outcome.refused:
        return None
    status = response.status if response is not None else None
    if outcome.error_code == "not_sent":
        return "unreachable (nothing sent)"
    if outcome.error_code == RATE_LIMITED:
        return "throttled past SEND_RETRY_BUDGET_S"
    if status in (401, 403):
        return f"the provider refused our credentials (HTTP {status})"
    if outcome.retry:
        return (
            f"{outcome.error_code} after SEND_ATTEMPTS tries (the provider says nothing was sent)"
        )
    if status == PAYMENT_REQUIRED or outcome.about_account:
        return f"out of credit ({outcome.error_code})"
    if outcome.error_code == OUTCOME_UNKNOWN:
        if status in RETRYABLE_STATUSES:
            return f"HTTP {status} after SEND_ATTEMPTS tries (the provider did not take it)"
        if on_timeout:
            return "no usable answer, maybe sent (the route fails over on timeouts)"
    return None


PAYMENT_REQUIRED = 402


@dataclasses.dataclass(frozen=True, slots=True)
class FailOver:
    """Recipients whose attempt over this call's provider is superseded by one over
    `provider`, in the transaction that stores the refusal."""

    provider: str
    recipients: tuple[str, ...]
    deadline: datetime
    reason: str
    redeliver: messages.Redelivery | None = None


async def store_outcome(
    context: AppContext,
    provider: Provider,
    send: SendRequest,
    message_id: uuid.UUID,
    call: HttpRequest,
    outcome: SendOutcome,
    response: HttpResponse | None,
    fail_overs: Sequence[FailOver] = (),
) -> list[str]:
    """Give each recipient the provider's id, then store the answer and its events like a
    callback: the same state machine, the raw answer kept. With `fail_overs`, those recipients
    get their next attempt first, so that the refusal is stored as the past attempt's (the
    recipient stays pending); returns the recipients given a next attempt."""
    pending = messages.pending_id(message_id)
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
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            async with (
                context.db.connection() as connection,
                connection.transaction(),
            ):
                moved: list[str] = []
                for fail_over in fail_overs:
                    moved += await messages.fail_over(
                        connection,
                        message_id,
                        fail_over.recipients,
                        fail_over.provider,
                        fail_over.deadline,
                        fail_over.redeliver,
                    )
                await _store_answer(connection, provider, message_id, pending, raw, outcome)
            return moved
        except asyncpg.PostgresError as error:
            # Lost a lock conflict with concurrent callbacks (the transaction is undone, the
            # provider has answered): store it again rather than lose its ids.
            if not lost_conflict(error) or attempt == STORE_ATTEMPTS:
                raise
            log.warning("send_answer_store_retried", attempt=attempt, error=repr(error))
    return []
    return []


async def _store_answer(
    connection: Connection,
    provider: Provider,
    message_id: uuid.UUID,
    pending: str,
    raw: RawCallback,
    outcome: SendOutcome,
) -> None:
    events = []
    version = normalizer_version(provider.name, provider)
    # In recipient key order, the order in which callbacks lock recipients too: a send
    # answer and a batch of callbacks sharing recipients queue instead of deadlocking.
    for event in sorted(outcome.events, key=_recipient_key):
        provider_id = event.provider_message_id
        if provider_id and event.recipient is not None:
            adopted = await messages.adopt_recipient(
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
        events.append(dataclasses.replace(event, raw_id=str(raw.id), normalizer=version))
        part_ids = outcome.parts.get(event.recipient or "")
        if provider_id is not None and event.recipient is not None and part_ids:
            await messages.register_parts(
                connection, provider.name, provider_id, event.recipient, part_ids
            )
    await callbacks.store_callback(connection, raw, outcome=NORMALISED, error=None, events=events)
    await callbacks.mark_send_answer(connection, raw.id)


def _recipient_key(event: Event) -> tuple[str, str]:
    return (event.provider_message_id or "", event.recipient or "")
