"""POST /v1/messages: validate, remember the Idempotency-Key, store the message, call the
provider through its adapter (see `providers`), and say per recipient what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from normalizers.base import (
    OUTCOME_UNKNOWN,
    HttpRequest,
    HttpResponse,
    OptionsError,
    Provider,
    SendOutcome,
    SendRequest,
    number_facts,
    to_e164,
)
from normalizers.encoding import Segmentation, segment
from normalizers.events import Event, EventType, Status, event_id
from receiver.config import Settings
from receiver.context import AppContext
from receiver.http.apikeys import API_KEY, TenantDisabled, caller_of
from receiver.http.bodies import read_model
from receiver.http.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ReceiverError,
    TooManyRequests,
    Unprocessable,
    error_body,
)
from receiver.http.fields import E164, Moment, ProviderName, TenantName, no_nul
from receiver.metrics import SEND_FAILOVERS
from receiver.ratelimit import retry_after_header
from receiver.routing.choice import (
    ROUTE_TABLE,
    Decision,
    Recipient,
    RouteTable,
    decide,
    first_match,
    redelivery,
)
from receiver.sending import silence
from receiver.sending.providers import (
    FailOver,
    account_of,
    call_provider,
    callback_url,
    can_send,
    failover_reason,
    is_simulated,
    store_outcome,
)
from receiver.storage import idempotency, limits, messages, optouts, tenants
from receiver.storage.apikeys import ApiKey
from receiver.storage.callbacks import store_events_alone
from receiver.storage.tenants import DEFAULT_TENANT, Tenant

log = structlog.get_logger("receiver.sending.route")

# Calls to one provider at once for one message (fan-out providers take one recipient a call).
CALLS_AT_ONCE = 10


@dataclasses.dataclass
class SendProgress:
    provider_called: bool = False


class SendMessageIn(BaseModel):
    """The body of POST /v1/messages."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        # TEXT_OR_MEDIA is stated in the description: the generators of clients read an anyOf
        # on an object as a union of types, and make no usable model of it.
        json_schema_extra={
            "description": "body may be empty only with options.media_urls",
            "examples": [{"to": ["+447700900123"], "body": "Code 123456", "provider": "swift"}],
        },
    )

    provider: ProviderName | None = None
    to: list[E164] = Field(min_length=1, max_length=10_000, json_schema_extra={"uniqueItems": True})
    sender: str | None = Field(default=None, alias="from", max_length=64)
    body: str = Field(default="", max_length=4096)  # empty only for an MMS with media
    ref: str | None = Field(default=None, max_length=255)
    send_at: Moment | None = None
    expires_at: Moment | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    # Whose message it is: a tenant's key sends as its own tenant (another name is a 403); the
    # operator names one (default: `default`).
    tenant: TenantName | None = None

    @field_validator("to")
    @classmethod
    def each_once(cls, numbers: list[str]) -> list[str]:
        if len(set(numbers)) != len(numbers):
            raise ValueError("a number is given twice")
        return numbers

    @field_validator("provider", "sender", "body", "ref", "tenant")
    @classmethod
    def plain_text(cls, text: str | None) -> str | None:
        # After the length checks, so that an error names the first rule broken, as always.
        return no_nul(text) if text is not None else None

    @model_validator(mode="after")
    def text_or_media(self) -> SendMessageIn:
        if not self.body and not self.options.get("media_urls"):
            raise PydanticCustomError("missing", "body is required (empty only with media_urls)")
        return self


def hash_of(incoming: SendMessageIn) -> str:
    """What tells a retry (the same body) from another request under the same key."""
    return hashlib.sha256(
        json.dumps(incoming.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
    ).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class SendLimits:
    """Whose sends count together (`caller`: a tenant, else an operator key or an address) and
    how many: the tenant's own limits, else the settings'."""

    caller: str
    rate_per_s: float
    burst: int
    daily_recipients: int


def send_limits(request: web.Request) -> SendLimits:
    settings = request.app[AppContext.KEY].settings
    key: ApiKey | None = request.get(API_KEY)
    tenant = key.tenant if key is not None else None
    if tenant is None:
        return SendLimits(
            caller_of(request),
            settings.send_rate_per_s,
            settings.send_burst,
            settings.send_daily_recipients,
        )
    return SendLimits(
        f"tenant {tenant.name}",
        tenant.send_rate_per_s or settings.send_rate_per_s,
        tenant.send_burst or settings.send_burst,
        (
            tenant.daily_recipients
            if tenant.daily_recipients is not None
            else settings.send_daily_recipients
        ),
    )


class ProviderNotAllowed(Forbidden):
    code = "provider_not_allowed"


async def sending_tenant(request: web.Request, incoming: SendMessageIn) -> Tenant:
    """The tenant the message is sent for: a tenant key's own (naming another is a 403); for
    the operator, the one the body names, else `default`."""
    key: ApiKey | None = request.get(API_KEY)
    if key is not None and key.tenant is not None:
        if incoming.tenant is not None and incoming.tenant != key.tenant.name:
            raise Forbidden(
                "a tenant's key sends for its own tenant only",
                details={"tenant": key.tenant.name},
            )
        return key.tenant
    name = incoming.tenant or DEFAULT_TENANT
    async with request.app[AppContext.KEY].db.connection() as connection:
        found = await tenants.tenant(connection, name)
    if found is None:
        raise NotFound(
            f"no tenant named {name!r}", details=[{"field": "tenant", "error": "unknown tenant"}]
        )
    if not found.enabled:
        raise TenantDisabled(f"the tenant {name!r} is disabled", details={"tenant": name})
    return found


async def handle_send(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    settings = context.settings
    given = send_limits(request)
    caller = given.caller
    async with context.db.connection() as connection:  # shared by every instance
        wait_s = await limits.take_send_token(connection, caller, given.rate_per_s, given.burst)
    if wait_s is not None:
        raise TooManyRequests(
            f"more than {given.rate_per_s:g} requests per second (burst"
            f" {given.burst}) for this {caller.split()[0]}",
            retry_after=retry_after_header(wait_s),
        )
    incoming = await read_model(request, SendMessageIn)
    quota = Quota(context, caller, given.daily_recipients)
    tenant = await sending_tenant(request, incoming)

    key = request.headers.get("Idempotency-Key")
    table = request.app[ROUTE_TABLE]
    if key is None:
        status, answer = await _checked_send(
            context, incoming, None, quota=quota, tenant=tenant, table=table
        )
        return web.json_response(answer, status=status)
    if not 1 <= len(key) <= 255:
        raise BadRequest("Idempotency-Key must be 1 to 255 characters")
    owner = str(request[API_KEY].id) if API_KEY in request else ""  # a key is its caller's
    # The key is claimed before anything that depends on time or configuration, so that a
    # replay answers what the first request answered, refusals included.
    request_hash = hash_of(incoming)
    async with context.db.connection() as connection:
        claim = await idempotency.claim_idempotency(
            connection,
            owner,
            key,
            request_hash,
            settings.idempotency_ttl_s,
            settings.idempotency_stale_s,
        )
    if claim.state == "replay":
        return web.json_response(claim.body, status=claim.status or 200)
    if claim.state == "conflict":
        raise Conflict("this Idempotency-Key was used with another request body")
    if claim.state == "in_progress":
        raise Conflict("a request with this Idempotency-Key is still running")
    progress = SendProgress()
    try:
        status, answer = await _checked_send(
            context, incoming, key, progress, quota=quota, tenant=tenant, table=table
        )
    except ReceiverError as error:  # a refusal: answered again to a retry with the key
        status, answer = error.status, error_body(error.code, error.message, error.details)
    except BaseException:
        # Once the provider has been called a retry could send the SMS twice: the key then
        # stays taken (409 until it expires). Before that (a database unavailable, say: no
        # answer to remember), the key is free again.
        if not progress.provider_called:
            async with context.db.connection() as connection:
                await idempotency.release_idempotency(connection, owner, key)
        raise
    try:
        async with context.db.connection() as connection:
            await idempotency.complete_idempotency(
                connection, owner, key, status, answer, settings.idempotency_ttl_s
            )
    except Exception:
        log.exception("idempotency_answer_not_stored", idempotency_key=key)
    return web.json_response(answer, status=status)


@dataclasses.dataclass(frozen=True, slots=True)
class Quota:
    """The caller's daily recipients, taken once a send is valid (shared by every instance)."""

    context: AppContext
    caller: str
    per_day: int

    async def take(self, recipients: int) -> None:
        per_day = self.per_day
        if not per_day:
            return
        now = datetime.now(UTC)
        async with self.context.db.connection() as connection:
            taken = await limits.take_send_quota(
                connection, self.caller, now.date(), recipients, per_day
            )
        if not taken:
            midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
            raise QuotaExceeded(
                f"more than {per_day} recipients today (UTC) for this"
                f" {self.caller.split()[0]} (SEND_DAILY_RECIPIENTS)",
                retry_after=retry_after_header((midnight - now).total_seconds()),
            )


class QuotaExceeded(TooManyRequests):
    code = "quota_exceeded"


def destinations(
    numbers: Sequence[str], *, simulated: bool, allowed: Sequence[str]
) -> dict[str, str | None]:
    """Each number's country; a 422 naming the index of each number that cannot be sent to:
    not a valid number (a simulated provider takes any possible one, Ofcom's drama range
    included), or a country outside SEND_ALLOWED_COUNTRIES."""
    countries: dict[str, str | None] = {}
    problems = []
    for index, number in enumerate(numbers):
        _possible, valid, country = number_facts(number)
        countries[number] = country
        if not valid and not simulated:
            problems.append({"field": f"to.{index}", "error": f"not a valid number: {number}"})
        elif allowed and country not in allowed:
            problems.append(
                {
                    "field": f"to.{index}",
                    "error": f"{number} is in {country or 'no country'}, not one of"
                    f" SEND_ALLOWED_COUNTRIES ({', '.join(allowed)})",
                }
            )
    if problems:
        raise Unprocessable("some recipients cannot be sent to", details=problems)
    return countries


async def send_for_tenant(
    context: AppContext,
    incoming: SendMessageIn,
    tenant: Tenant,
    quota: Quota,
    table: RouteTable,
) -> tuple[int, dict[str, Any]]:
    """A send the hub makes itself for a tenant (a HELP answer): checked and sent as the API's
    are, without an API key's rate limit or Idempotency-Key."""
    return await _checked_send(context, incoming, None, quota=quota, tenant=tenant, table=table)


class NoRoute(Conflict):
    """No provider named and no route matches: the routes as they stand (a 409, as the same
    request succeeds once a route takes it)."""

    code = "no_route"


async def plan_providers(
    context: AppContext,
    incoming: SendMessageIn,
    tenant: Tenant,
    table: RouteTable,
) -> dict[str, Decision]:
    """Each recipient's providers in the order they are tried, and why: the one the caller
    names; else the first matching route's; else DEFAULT_PROVIDER; else a 409 (`no_route`)."""
    settings = context.settings
    named = incoming.provider
    if named is None:
        routed = await _routed(context, incoming, tenant, table)
        if routed is not None:
            return routed
        named = settings.default_provider
        why = "no route matches: DEFAULT_PROVIDER"
        if named is None:  # _routed refuses first; kept for the type
            raise NoRoute("no provider given and no route matches")
    else:
        why = "named by the caller"
    if context.registry.get(named) is None:
        raise BadRequest(f"unknown provider {named!r}", details={"known": sorted(context.registry)})
    if not tenant.may_send_through(named):
        raise ProviderNotAllowed(
            f"the tenant {tenant.name!r} may not send through {named}",
            details={"provider": named, "allowed": sorted(tenant.providers or ())},
        )
    decision = Decision(route=None, choose="named", providers=(named,), why=why)
    return dict.fromkeys(incoming.to, decision)


async def _routed(
    context: AppContext, incoming: SendMessageIn, tenant: Tenant, table: RouteTable
) -> dict[str, Decision] | None:
    """The routes' decisions; None when no route takes any recipient and DEFAULT_PROVIDER is
    set (it takes them all)."""
    settings = context.settings
    table_now = await table.current(context.db)
    kind = "mms" if incoming.options.get("media_urls") else "sms"
    sender = to_e164(incoming.sender) if incoming.sender else None

    def allowed(name: str) -> bool:
        return (
            name in context.registry and tenant.may_send_through(name) and can_send(settings, name)
        )

    decisions: dict[str, Decision] = {}
    unrouted: list[dict[str, str]] = []
    for index, number in enumerate(incoming.to):
        recipient = Recipient(number, number_facts(number)[2], tenant.name, sender, kind)
        route = first_match(table_now, recipient)
        if route is None:
            unrouted.append(
                {"field": f"to.{index}", "error": f"no route matches {number} and no provider"}
            )
            continue
        decision = decide(route, recipient, allowed, table.health, table.turns)
        if not decision.providers:
            raise ProviderNotAllowed(
                f"the tenant {tenant.name!r} may send through none of route"
                f" {route.name}'s providers",
                details={"route": route.name, "providers": route.spec.providers},
            )
        decisions[number] = decision
    if unrouted:
        if not decisions and settings.default_provider is not None:
            return None
        raise NoRoute(
            "no provider given and no route matches: name a provider, or add a route",
            details=unrouted,
        )
    return decisions


@dataclasses.dataclass(frozen=True, slots=True)
class SendPlan:
    """Who carries each recipient, in which order, with each provider's options."""

    decisions: Mapping[str, Decision]
    options: Mapping[str, Mapping[str, Any]]
    # Told of every provider call (the circuit breakers): this instance's route table.
    observer: RouteTable | None = None

    def providers(self) -> list[str]:
        names: dict[str, None] = {}
        for decision in self.decisions.values():
            names.update(dict.fromkeys(decision.providers))
        return list(names)

    def routing_json(self) -> list[dict[str, Any]] | None:
        """How the providers were chosen, per group of recipients decided alike; None when
        the caller named the provider."""
        groups: dict[int, tuple[Decision, list[str]]] = {}
        for number, decision in self.decisions.items():
            groups.setdefault(id(decision), (decision, []))[1].append(number)
        if all(
            decision.route is None and decision.choose == "named" for decision, _ in groups.values()
        ):
            return None
        return [decision.as_json(numbers) for decision, numbers in groups.values()]


def provider_options(
    context: AppContext,
    names: Sequence[str],
    incoming: SendMessageIn,
    send: SendRequest,
    now: datetime,
) -> dict[str, Mapping[str, Any]]:
    """The options as each provider that may carry the message takes them (a 422 naming the
    provider when one refuses them)."""
    options: dict[str, Mapping[str, Any]] = {}
    for name in names:
        provider = context.registry[name]
        try:
            options[name] = provider.validate_options(incoming.options, send, now)
        except OptionsError as error:
            where = "" if len(names) == 1 else f" for {name}"
            raise Unprocessable(
                f"the options are not valid{where}", details=error.details
            ) from None
    return options


async def _checked_send(
    context: AppContext,
    incoming: SendMessageIn,
    key: str | None,
    progress: SendProgress | None = None,
    *,
    quota: Quota,
    tenant: Tenant,
    table: RouteTable,
) -> tuple[int, dict[str, Any]]:
    settings = context.settings
    decisions = await plan_providers(context, incoming, tenant, table)
    names = list(dict.fromkeys(p for d in decisions.values() for p in d.providers))
    first = decisions[incoming.to[0]].providers[0]
    structlog.contextvars.bind_contextvars(provider=first)
    for name in names:
        account_of(settings, name)  # a provider that cannot be sent to is a 400 now
    message_id = uuid.uuid4()
    routed = any(decision.route is not None for decision in decisions.values())
    send = SendRequest(
        to=incoming.to,
        sender=incoming.sender,
        body=incoming.body,
        message_id=str(message_id),
        client_ref=incoming.ref,
        callback_url=callback_url(settings, first),
        send_at=incoming.send_at,
        expires_at=incoming.expires_at,
    )
    now = datetime.now(UTC)
    if incoming.expires_at is not None and incoming.expires_at <= max(now, incoming.send_at or now):
        # Sending after it is what expires_at forbids: it could never go.
        raise Unprocessable(
            "expires_at is not after the send time",
            details=[{"field": "expires_at", "error": "must be after now and after send_at"}],
        )
    countries = destinations(
        incoming.to,
        simulated=all(is_simulated(settings, name) for name in names),
        allowed=settings.send_allowed_countries,
    )
    plan = SendPlan(decisions, provider_options(context, names, incoming, send, now), table)
    await quota.take(len(incoming.to))
    local = segment(send.body)
    # A routed message the hub holds itself, whatever its providers can do: its route decides
    # again, with the providers' health then, when it is sent.
    held = held_at_hub(send) if routed else held_until(context.registry[first], send)
    firsts = {number: decision.providers[0] for number, decision in decisions.items()}
    async with context.db.connection() as connection:
        blocked = await messages.create_message(
            connection,
            message_id,
            first,
            send.to,
            tenant=tenant.name,
            sender=send.sender,
            body=send.body,
            client_ref=send.client_ref,
            segments=local.segments,
            encoding=local.encoding,
            request=incoming.model_dump(mode="json", by_alias=True),
            send_at=send.send_at,
            expires_at=send.expires_at,
            idempotency_key=key,
            deadline=silence.deadline(settings, first, send),
            dispatch_at=held,
            countries=countries,
            providers=firsts,
            deadlines={n: silence.deadline(settings, p, send) for n, p in firsts.items()},
            routing=plan.routing_json(),
            redeliver={
                number: again
                for number, decision in decisions.items()
                if (again := redelivery(decision, held or now)) is not None
            },
        )
    structlog.contextvars.bind_contextvars(message_id=str(message_id))
    if held is not None:
        log.info("send_held", dispatch_at=held.isoformat())
        return 201, await _answer(context, first, message_id, local, [], None, None)
    if routed:
        send = dataclasses.replace(send, send_at=None)
    return await deliver(
        context, send, message_id, plan, progress or SendProgress(), blocked=blocked
    )


async def deliver(
    context: AppContext,
    send: SendRequest,
    message_id: uuid.UUID,
    plan: SendPlan,
    progress: SendProgress,
    *,
    counts: bool = True,
    blocked: set[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Calls the providers for a stored message and stores their answers: what POST
    /v1/messages does at once, and the scheduler at a held message's send time. Recipients that
    a provider refuses for a reason that is not about the message go to the next provider of
    their route, in the same call, as their next attempt."""
    settings = context.settings
    local = segment(send.body)
    limit = asyncio.Semaphore(CALLS_AT_ONCE)
    progress.provider_called = True
    stored = True
    position = dict.fromkeys(send.to, 0)
    last: dict[str, SendOutcome] = {}  # each recipient's latest answer
    outcomes: list[SendOutcome] = []

    async def over(name: str, numbers: list[str]) -> list[str]:
        """Sends to these numbers through one provider; returns those that go on to their
        next one."""
        nonlocal stored
        provider = context.registry[name]
        account = account_of(settings, name)
        request = dataclasses.replace(
            send,
            to=numbers,
            callback_url=callback_url(settings, name),
            options=plan.options.get(name, {}),
        )

        # From here on the provider may have sent: whatever fails on our side, the client gets
        # what is known (never a "retry" that could send twice), and the log has what was not
        # stored.
        async def one(call: HttpRequest) -> list[str]:
            nonlocal stored
            async with limit:
                outcome, answer = await call_provider(context, provider, account, call, request)
            onward = _fail_overs(settings, plan, position, name, call, outcome, answer, request)
            await _observe(context, plan, name, call, outcome, answer)
            moved: list[str] = []
            try:
                moved = await store_outcome(
                    context, provider, request, message_id, call, outcome, answer, onward
                )
            except Exception:
                stored = False
                log.exception(
                    "send_answer_not_stored",
                    recipients=list(call.recipients),
                    provider_ids=[e.provider_message_id for e in outcome.events],
                    statuses=[str(e.status) for e in outcome.events],
                )
            for number in call.recipients:
                last[number] = outcome
            for number in moved:
                position[number] += 1
            if moved:
                SEND_FAILOVERS.labels(name, "send").inc(len(moved))
                log.warning(
                    "send_failed_over",
                    provider=name,
                    recipients=len(moved),
                    to=sorted({f.provider for f in onward}),
                    reason=onward[0].reason if onward else None,
                )
            outcomes.append(outcome)
            return moved

        calls = provider.build_send_request(request, account)
        moved = await asyncio.gather(*(one(call) for call in calls))
        return [number for numbers in moved for number in numbers]

    if blocked is None:  # not known from the message's creation: a held send, a redelivery
        async with context.db.connection() as connection:
            blocked = await optouts.suppressed(connection, message_id, send.to)
    if blocked:
        await _refuse_opted_out(context, message_id, plan, position, blocked)
    todo = [number for number in send.to if number not in blocked]
    while todo:
        groups: dict[str, list[str]] = {}
        for number in todo:
            groups.setdefault(plan.decisions[number].providers[position[number]], []).append(number)
        onward = await asyncio.gather(*(over(name, numbers) for name, numbers in groups.items()))
        todo = [number for numbers in onward for number in numbers]
    context.signal.new_events()
    answered = [o for o in outcomes if not o.refused]
    provider_segments = max((o.segments or 0 for o in answered), default=0) or None
    if provider_segments is not None and provider_segments != local.segments:
        log.warning("segment_count_differs", ours=local.segments, provider=provider_segments)
    counted = [o.recipients for o in answered if o.recipients is not None]
    provider_recipients = sum(counted) if counted else None
    if provider_recipients is not None and provider_recipients != len(send.to):
        log.warning("recipient_count_differs", sent=len(send.to), provider=provider_recipients)
    if counts and (provider_segments is not None or provider_recipients is not None):
        try:
            async with context.db.connection() as connection:
                await messages.set_provider_counts(
                    connection, message_id, provider_segments, provider_recipients
                )
        except Exception:
            log.exception("provider_counts_not_stored")
    first = plan.decisions[send.to[0]].providers[0]
    answer = await _answer(
        context, first, message_id, local, outcomes, provider_segments, provider_recipients
    )
    answer["stored"] = answer["stored"] and stored
    finals = [last[number] for number in send.to if number in last]
    if finals and all(outcome.refused for outcome in finals):
        failed = finals[-1]
        name = next((e.provider for e in failed.events), plan.decisions[send.to[-1]].providers[0])
        unknown = failed.error_code == OUTCOME_UNKNOWN
        error = error_body(
            "provider_outcome_unknown" if unknown else "provider_refused",
            (
                f"{name} did not answer usably: the message may or may not have been"
                " sent (do not send it again blindly; later reports are still recorded)"
                if unknown
                else f"{name} refused the message"
            ),
            {
                "provider_error_code": failed.error_code,
                "provider_error_message": failed.error_message,
                "provider_details": dict(failed.details),
                "message": answer,
            },
        )
        return 502, error
    return 201, answer


async def _refuse_opted_out(
    context: AppContext,
    message_id: uuid.UUID,
    plan: SendPlan,
    position: Mapping[str, int],
    numbers: set[str],
) -> None:
    """Recipients on the opt-out list: `rejected` (permanent, error `opted_out`) without a
    provider call; the rest of the message goes on."""
    now = datetime.now(UTC)
    pending = messages.pending_id(message_id)
    events = []
    for number in sorted(numbers):
        provider = plan.decisions[number].providers[position[number]]
        events.append(
            Event(
                id=event_id(provider, OPTED_OUT, pending, number),
                type=EventType.STATUS,
                provider=provider,
                status=Status.REJECTED,
                provider_status=OPTED_OUT,
                occurred_at=now,
                received_at=now,
                occurred_at_source="received",
                provider_message_id=pending,
                recipient=number,
                error_code=OPTED_OUT,
                error_message="the handset opted out (a STOP reply, or the opt-out list): not sent",
                failure_kind="permanent",
                synthetic=True,
            )
        )
    async with context.db.connection() as connection, connection.transaction():
        await store_events_alone(connection, events)
    log.info("send_opted_out", recipients=len(events))


# The error code (and provider status) of a recipient not sent to because it opted out.
OPTED_OUT = "opted_out"


async def _observe(
    context: AppContext,
    plan: SendPlan,
    provider: str,
    call: HttpRequest,
    outcome: SendOutcome,
    answer: HttpResponse | None,
) -> None:
    """The call's result for the provider's circuit breaker (a refusal about the message is a
    provider that works)."""
    if plan.observer is None:
        return
    error = failover_reason(outcome, answer, on_timeout=False) if outcome.refused else None
    try:
        if await plan.observer.observed(context.db, provider, call.recipients, error):
            context.signal.new_events()
    except Exception:
        log.exception("provider_health_not_recorded", provider=provider)


def _fail_overs(
    settings: Settings,
    plan: SendPlan,
    position: Mapping[str, int],
    provider: str,
    call: HttpRequest,
    outcome: SendOutcome,
    answer: HttpResponse | None,
    request: SendRequest,
) -> list[FailOver]:
    """Where a refused call's recipients go next: the next provider of each one's route, when
    the refusal is about the provider (see `failover_reason`) and one is left."""
    if not outcome.refused:
        return []
    by_next: dict[str, list[str]] = {}
    reason = None
    for number in call.recipients:
        decision = plan.decisions.get(number)
        if decision is None or decision.route is None:
            continue
        reason = failover_reason(outcome, answer, on_timeout=decision.failover_on_timeout)
        following = position[number] + 1
        if reason is None or following >= len(decision.providers):
            continue
        by_next.setdefault(decision.providers[following], []).append(number)
    return [
        FailOver(
            name,
            tuple(numbers),
            silence.deadline(settings, name, request),
            f"{provider}: {reason}",
            redelivery(plan.decisions[numbers[0]], datetime.now(UTC)),
        )
        for name, numbers in by_next.items()
    ]


async def _answer(
    context: AppContext,
    provider: str,
    message_id: uuid.UUID,
    local: Segmentation,
    outcomes: Sequence[SendOutcome],
    provider_segments: int | None,
    provider_recipients: int | None,
) -> dict[str, Any]:
    """The send API's answer: the message with its recipients as stored (as the providers
    answered, should they not be readable)."""
    stored = True
    recipients: list[dict[str, Any]] | None = None
    try:
        async with context.db.connection() as connection:
            rows = await messages.recipients_as_answered(connection, message_id)
        recipients = [
            answered_recipient(latest, attempts) for latest, attempts in messages.by_recipient(rows)
        ]
    except Exception:
        stored = False
        log.exception("message_state_not_read")
    if recipients is None:
        recipients = [_as_answered(event) for outcome in outcomes for event in outcome.events]
    return {
        "id": str(message_id),
        "provider": provider,
        "segments": local.segments,
        "encoding": local.encoding,
        "provider_segments": provider_segments,
        "provider_recipients": provider_recipients,
        "stored": stored,
        "recipients": recipients,
    }


def held_until(provider: Provider, send: SendRequest) -> datetime | None:
    """When the hub itself sends this message: its send_at, if the provider cannot schedule
    and that is not now."""
    if send.send_at is None or provider.schedules_sends:
        return None
    return send.send_at if send.send_at > datetime.now(UTC) + HOLD_AFTER else None


# A send_at closer than this is now: the message goes at once.
HOLD_AFTER = timedelta(seconds=1)


def held_at_hub(send: SendRequest) -> datetime | None:
    """When the hub itself sends a routed message: its send_at, if that is not now."""
    if send.send_at is None:
        return None
    return send.send_at if send.send_at > datetime.now(UTC) + HOLD_AFTER else None


def answered_recipient(
    row: asyncpg.Record, attempts: Sequence[asyncpg.Record] = ()
) -> dict[str, Any]:
    """A recipient as stored, in the send API's answers (the send's, and a cancel's): its
    latest attempt's state, the provider that carries it, and each attempt."""
    return {
        "to": row["recipient"],
        "status": row["status"],
        "final": row["final"],
        "provider": row["provider"],
        "attempt": row["attempt"],
        "provider_message_id": row["provider_message_id"],
        "failure_kind": row["failure_kind"],
        "error_code": row["error_code"],
        "error_message": row["error_message"],
        "attempts": [
            {
                "attempt": each["attempt"],
                "provider": each["provider"],
                "status": each["status"],
                "final": each["final"],
                "provider_message_id": each["provider_message_id"],
                "error_code": each["error_code"],
                "error_message": each["error_message"],
            }
            for each in attempts or (row,)
        ],
    }


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
