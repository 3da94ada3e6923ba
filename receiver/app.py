"""The aiohttp application: the one route table (router, scopes and OpenAPI document all come
from it), the middlewares, and the resources its lifecycle owns (the database pool, the HTTP
client, the callback writer, the spool, the dispatcher)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr

from normalizers.events import EventType, Status
from normalizers.registry import DEFAULT_REGISTRY, Registry
from receiver.config import Settings
from receiver.console.pages import add_console
from receiver.context import AppContext
from receiver.corrections import routes as correction_routes
from receiver.corrections.background import RUNS, BackgroundRuns
from receiver.delivery import feed, subscriptions
from receiver.delivery.dispatcher import Dispatcher
from receiver.http import openapi, params, schemas
from receiver.http.apikeys import api_key_middleware
from receiver.http.errors import make_error_middleware
from receiver.http.fields import TENANT_NAME_PATTERN
from receiver.http.requestlog import request_log_middleware
from receiver.http.routing import Param, Route, add_routes
from receiver.ingest import route as callback_route
from receiver.ingest.auth import is_authenticated
from receiver.ingest.groupcommit import CallbackWriter
from receiver.ingest.refusals import Refusals
from receiver.ingest.reprocess import reprocess_callback
from receiver.ingest.spool import Spool, replay_forever
from receiver.optouts import routes as optout_routes
from receiver.optouts.keys import check_key
from receiver.query import health, inbound, messages, raw_callbacks, stats
from receiver.ratelimit import RateLimiter
from receiver.routing import routes as send_routes
from receiver.routing.choice import ROUTE_TABLE, RouteTable
from receiver.routing.health import HealthWatch
from receiver.sandbox import controls as sandbox_controls
from receiver.sandbox import sandbox_app
from receiver.sandbox.common import SANDBOX_KEY, Sandbox
from receiver.sending import route as send_route
from receiver.sending import scheduler
from receiver.sending.providers import callback_url
from receiver.sending.scheduler import Scheduler
from receiver.sending.silence import SilenceSweep
from receiver.storage.callbacks import OUTCOMES
from receiver.storage.migrate import load_migrations, migrations_dir
from receiver.storage.notify import Signal
from receiver.storage.pool import open_database
from receiver.storage.routes import ROUTE_NAME_PATTERN
from receiver.tenants import routes as tenant_routes
from receiver.upkeep.retention import Upkeep

log = structlog.get_logger("receiver.app")

PROVIDER_NAME = {"$ref": "#/components/schemas/ProviderName"}
CURSOR = Param("cursor", schema=params.cursor_schema(params.UUID_KEY))
LIMIT = Param("limit", schema=params.limit_schema())
PROVIDER = Param("provider", schema=PROVIDER_NAME)
SINCE = Param("since", schema=params.TIME_SCHEMA)
UNTIL = Param("until", schema=params.TIME_SCHEMA)
PROVIDER_PATH = Param("provider", "path", PROVIDER_NAME, required=True)
TOKEN_PATH = Param("token", "path", required=True)
ID_PATH = Param("id", "path", {"type": "string", "format": "uuid"}, required=True)
TENANT_PATH = Param(
    "name", "path", {"type": "string", "pattern": TENANT_NAME_PATTERN}, required=True
)
ROUTE_PATH = Param("name", "path", {"type": "string", "pattern": ROUTE_NAME_PATTERN}, required=True)
FEED_AFTER = Param("after", schema=feed.CURSOR_SCHEMA)
EVENT_TYPE = Param("type", schema=params.choice_schema([str(kind) for kind in EventType]))
CALLBACK_ANSWERS = {"200": schemas.CallbackAnswer, "202": schemas.CallbackAnswer}

ROUTES: tuple[Route, ...] = (
    Route(
        "get",
        "/healthz",
        health.healthz,
        "The process is up",
        {"200": schemas.Health},
        errors=(),
    ),
    Route(
        "get",
        "/readyz",
        health.readyz,
        "The database answers and is migrated",
        {"200": schemas.Ready, "503": schemas.Ready},
        errors=(),
    ),
    Route(
        "get",
        "/metrics",
        health.metrics,
        "Metrics in Prometheus' text format",
        {"200": None},
        errors=(),
        content_type="text/plain",
    ),
    Route(
        "get",
        "/openapi.json",
        openapi.openapi_json,
        "This document",
        {"200": None},
        errors=(),
    ),
    Route(
        "get",
        "/docs",
        openapi.docs,
        "This document as a page",
        {"200": None},
        errors=(),
        content_type="text/html",
    ),
    Route(
        "post",
        "/callbacks/{provider}",
        callback_route.handle_callback,
        "A provider's callback (any format it sends)",
        CALLBACK_ANSWERS,
        any_body=True,
        params=(PROVIDER_PATH,),
        errors=("400", "401", "403", "404", "408", "413", "429", "503"),
        expect_handler=callback_route.expect_within_limit,
    ),
    Route(
        "get",
        "/callbacks/{provider}",
        callback_route.handle_callback,
        "A provider's callback by GET (query string)",
        CALLBACK_ANSWERS,
        params=(PROVIDER_PATH,),
        errors=("400", "401", "403", "404", "429", "503"),
        expect_handler=callback_route.expect_within_limit,
    ),
    Route(
        "post",
        "/callbacks/{provider}/{token}",
        callback_route.handle_callback,
        "A provider's callback, on the URL that carries its secret token",
        CALLBACK_ANSWERS,
        any_body=True,
        params=(PROVIDER_PATH, TOKEN_PATH),
        errors=("400", "401", "403", "404", "408", "413", "429", "503"),
        expect_handler=callback_route.expect_within_limit,
    ),
    Route(
        "get",
        "/callbacks/{provider}/{token}",
        callback_route.handle_callback,
        "A provider's callback by GET, on the URL that carries its secret token",
        CALLBACK_ANSWERS,
        params=(PROVIDER_PATH, TOKEN_PATH),
        errors=("400", "401", "403", "404", "429", "503"),
        expect_handler=callback_route.expect_within_limit,
    ),
    Route(
        "post",
        "/v1/messages",
        send_route.handle_send,
        "Send a message through a provider",
        {"201": schemas.SendAnswer, "502": schemas.ErrorBody},
        scope="send",
        rules="`body` may be empty only with `options.media_urls`; `options` are the provider's"
        " (which it takes depends on the provider the message goes by); `expires_at` must be"
        " after now and after `send_at`; SEND_ALLOWED_COUNTRIES refuses other destinations:"
        " each a 422 naming the field. No route matching and no provider named: 409 no_route;"
        " the provider failing: 502.",
        body=send_route.SendMessageIn,
        params=(
            Param(
                "Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 255}
            ),
        ),
        errors=("400", "401", "403", "404", "408", "409", "413", "422", "429", "503"),
    ),
    Route(
        "delete",
        "/v1/messages/{id}",
        scheduler.cancel_message,
        "Cancel a message the hub holds until its send_at",
        {"200": schemas.CancelAnswer},
        scope="send",
        params=(ID_PATH,),
        errors=("401", "403", "404", "409", "503"),
    ),
    Route(
        "post",
        "/v1/messages/{id}/cancel",
        scheduler.cancel_message,
        "Cancel a message the hub holds until its send_at (as DELETE)",
        {"200": schemas.CancelAnswer},
        scope="send",
        params=(ID_PATH,),
        errors=("401", "403", "404", "409", "503"),
    ),
    Route(
        "get",
        "/v1/messages",
        messages.list_messages,
        "Messages, newest first",
        {"200": schemas.MessageList},
        scope="read",
        params=(
            Param("ref", schema=params.TEXT_SCHEMA),
            PROVIDER,
            Param("status", schema=params.choice_schema([str(status) for status in Status])),
            Param("to", schema=params.NUMBER_SCHEMA),
            Param("tenant", schema=params.TEXT_SCHEMA),
            SINCE,
            UNTIL,
            LIMIT,
            CURSOR,
        ),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/messages/{id}",
        messages.get_message,
        "One message, its recipients and event timeline",
        {"200": schemas.MessageView},
        scope="read",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "get",
        "/v1/messages/by-provider-id/{provider}/{provider_message_id}",
        messages.by_provider_id,
        "The message a provider's id belongs to (or its orphan reports)",
        {"200": schemas.MessageView | schemas.OrphanView},
        scope="read",
        params=(PROVIDER_PATH, Param("provider_message_id", "path", required=True)),
        errors=("400", "401", "403", "404", "503"),
    ),
    Route(
        "get",
        "/v1/inbound",
        inbound.inbound,
        "Inbound replies and the message each answers",
        {"200": schemas.InboundPage},
        scope="read",
        params=(
            PROVIDER,
            Param("from", schema=params.NUMBER_SCHEMA),
            Param("to", schema=params.NUMBER_SCHEMA),
            SINCE,
            UNTIL,
            LIMIT,
            Param("cursor", schema=params.cursor_schema(params.TEXT_KEY)),
        ),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/events",
        feed.events,
        "Every event in commit-safe order (the pull feed)",
        {"200": schemas.EventPage},
        scope="read",
        params=(FEED_AFTER, Param("limit", schema=params.limit_schema(100)), EVENT_TYPE, PROVIDER),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/events/stream",
        feed.stream,
        "The same events, live, as Server-Sent Events",
        {"200": None},
        content_type="text/event-stream",
        scope="read",
        rules="At most STREAMS_PER_KEY streams at once per API key: a 429 beyond.",
        params=(
            FEED_AFTER,
            Param("Last-Event-ID", "header", feed.CURSOR_SCHEMA),
            EVENT_TYPE,
            PROVIDER,
        ),
        errors=("400", "401", "403", "429", "503"),
    ),
    Route(
        "post",
        "/v1/subscriptions",
        subscriptions.create,
        "Subscribe a URL (the secret is shown once)",
        {"201": schemas.SubscriptionCreated},
        scope="admin",
        rules="Exactly one of `url` (a webhook, whose host must resolve to an address"
        " WEBHOOK_ALLOWED_NETWORKS allows) and `destination` (a broker; a RabbitMQ"
        " routing_key of 255 bytes at most in UTF-8): else a 422.",
        body=subscriptions.SubscriptionIn,
        errors=("401", "403", "408", "422", "503"),
    ),
    Route(
        "get",
        "/v1/subscriptions",
        subscriptions.list_all,
        "Every subscription",
        {"200": schemas.SubscriptionList},
        scope="admin",
        errors=("401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/subscriptions/{id}",
        subscriptions.get_one,
        "One subscription",
        {"200": schemas.SubscriptionView},
        scope="admin",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "patch",
        "/v1/subscriptions/{id}",
        subscriptions.patch,
        "Change a subscription",
        {"200": schemas.SubscriptionView},
        scope="admin",
        rules="Not both `url` and `destination`: else a 422.",
        body=subscriptions.SubscriptionPatch,
        params=(ID_PATH,),
        errors=("401", "403", "404", "408", "422", "503"),
    ),
    Route(
        "delete",
        "/v1/subscriptions/{id}",
        subscriptions.delete,
        "Delete a subscription",
        {"204": None},
        scope="admin",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "post",
        "/v1/subscriptions/{id}/rotate-secret",
        subscriptions.rotate,
        "A new secret; the old one signs too for 24 h",
        {"200": schemas.RotatedSecret},
        scope="admin",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "post",
        "/v1/subscriptions/{id}/replay",
        subscriptions.replay,
        "Queue again the events since a time",
        {"202": schemas.Queued},
        scope="admin",
        body=subscriptions.ReplayIn,
        params=(ID_PATH,),
        errors=("401", "403", "404", "408", "422", "503"),
    ),
    Route(
        "post",
        "/v1/deliveries/{id}/retry",
        subscriptions.retry,
        "Try one delivery again now",
        {"202": schemas.Queued},
        scope="admin",
        params=(Param("id", "path", {"type": "integer", "minimum": 1}, required=True),),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "get",
        "/v1/raw-callbacks",
        raw_callbacks.raw_callbacks,
        "Raw callbacks, newest first (operator keys only)",
        {"200": schemas.RawCallbackPage},
        scope="admin",
        operator=True,
        params=(Param("outcome", schema=params.choice_schema(OUTCOMES)), PROVIDER, LIMIT, CURSOR),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/raw-callbacks/{id}",
        raw_callbacks.raw_callback,
        "One raw callback, body shown, secrets redacted",
        {"200": schemas.RawCallbackDetail},
        scope="admin",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "post",
        "/v1/raw-callbacks/{id}/reprocess",
        reprocess_callback,
        "Normalise an unparsed raw callback again, with today's normalisers (operator keys only)",
        {"200": schemas.ReprocessResult},
        scope="admin",
        operator=True,
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "get",
        "/v1/callback-refusals",
        raw_callbacks.callback_refusals,
        "Callbacks refused by authentication, newest first: metadata only (operator keys only)",
        {"200": schemas.CallbackRefusalPage},
        scope="admin",
        operator=True,
        params=(PROVIDER, LIMIT, CURSOR),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/stats",
        stats.stats,
        "Per provider and destination country: delivery rate, report times, expiries",
        {"200": schemas.Stats},
        scope="read",
        rules="`since` (default: 24 hours ago) is at most 31 days ago, else a 400.",
        params=(
            SINCE,
            UNTIL,
            Param("fast_under_s", schema=params.seconds_schema(stats.FAST_UNDER_MAX_S)),
        ),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/opt-outs",
        optout_routes.list_all,
        "The opt-out list: a tenant's own entries, the operator's every one",
        {"200": optout_routes.OptOutList},
        scope="read",
        params=(
            Param("number", schema=params.NUMBER_SCHEMA),
            LIMIT,
            Param("cursor", schema=params.cursor_schema(params.SERIAL_KEY)),
        ),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "post",
        "/v1/opt-outs",
        optout_routes.create,
        "Add a handset to the opt-out list (its sends are refused: rejected, opted_out)",
        {"201": optout_routes.OptOutView},
        scope="send",
        body=optout_routes.OptOutIn,
        errors=("401", "403", "404", "408", "422", "503"),
    ),
    Route(
        "delete",
        "/v1/opt-outs/{id}",
        optout_routes.delete,
        "Take an entry off the opt-out list",
        {"204": None},
        scope="admin",
        params=(Param("id", "path", {"type": "integer", "minimum": 1}, required=True),),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "get",
        "/v1/correction-runs",
        correction_routes.list_all,
        "Correction runs, latest first: window, normaliser versions, progress and findings"
        " (operator keys only)",
        {"200": correction_routes.CorrectionRunList},
        scope="admin",
        operator=True,
        params=(LIMIT,),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "post",
        "/v1/correction-runs",
        correction_routes.start,
        "Start a correction run: a dry run (the default) reports what today's normalisers would"
        " change, an apply changes it (operator keys only)",
        {"202": correction_routes.CorrectionRunView},
        scope="admin",
        operator=True,
        body=correction_routes.CorrectionRunIn,
        errors=("401", "403", "408", "409", "422", "503"),
    ),
    Route(
        "get",
        "/v1/correction-runs/{id}",
        correction_routes.get_one,
        "One correction run (operator keys only)",
        {"200": correction_routes.CorrectionRunView},
        scope="admin",
        operator=True,
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "post",
        "/v1/correction-runs/{id}/apply",
        correction_routes.apply_dry_run,
        "Apply what a finished dry run found: a new run over the same window (operator keys only)",
        {"202": correction_routes.CorrectionRunView},
        scope="admin",
        operator=True,
        params=(ID_PATH,),
        errors=("401", "403", "404", "409", "503"),
    ),
    Route(
        "post",
        "/v1/correction-runs/{id}/stop",
        correction_routes.stop,
        "Stop a run after its batch in hand; an apply resumes from there when started again"
        " (operator keys only)",
        {"202": correction_routes.CorrectionRunView},
        scope="admin",
        operator=True,
        params=(ID_PATH,),
        errors=("401", "403", "404", "409", "503"),
    ),
    Route(
        "get",
        "/v1/routes",
        send_routes.list_all,
        "Every send route, in the order they are tried (operator keys only)",
        {"200": send_routes.RouteList},
        scope="admin",
        operator=True,
        errors=("401", "403", "503"),
    ),
    Route(
        "post",
        "/v1/routes",
        send_routes.create,
        "Make a send route (operator keys only)",
        {"201": send_routes.RouteView},
        scope="admin",
        rules="`weights` and `prices` may name only the route's `providers`: else a 422.",
        operator=True,
        body=send_routes.RouteIn,
        errors=("401", "403", "408", "409", "422", "503"),
    ),
    Route(
        "get",
        "/v1/routes/{name}",
        send_routes.get_one,
        "One send route (operator keys only)",
        {"200": send_routes.RouteView},
        scope="admin",
        operator=True,
        params=(ROUTE_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "put",
        "/v1/routes/{name}",
        send_routes.put,
        "Make or replace a send route (operator keys only)",
        {"200": send_routes.RouteView, "201": send_routes.RouteView},
        scope="admin",
        rules="`weights` and `prices` may name only the route's `providers`: else a 422.",
        operator=True,
        body=send_routes.RouteBody,
        params=(ROUTE_PATH,),
        errors=("401", "403", "408", "422", "503"),
    ),
    Route(
        "delete",
        "/v1/routes/{name}",
        send_routes.delete,
        "Delete a send route (operator keys only)",
        {"204": None},
        scope="admin",
        operator=True,
        params=(ROUTE_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "get",
        "/v1/route-changes",
        send_routes.changes,
        "Every change of the send routes, latest first: who, when, before, after (operator keys"
        " only)",
        {"200": send_routes.RouteChanges},
        scope="admin",
        operator=True,
        params=(Param("route", schema=params.TEXT_SCHEMA), LIMIT),
        errors=("400", "401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/tenants",
        tenant_routes.list_all,
        "Every tenant, its settings, numbers and number of keys (operator keys only)",
        {"200": tenant_routes.TenantList},
        scope="admin",
        operator=True,
        errors=("401", "403", "503"),
    ),
    Route(
        "post",
        "/v1/tenants",
        tenant_routes.create,
        "Make a tenant (operator keys only)",
        {"201": tenant_routes.TenantView},
        scope="admin",
        operator=True,
        body=tenant_routes.TenantIn,
        errors=("401", "403", "408", "409", "422", "503"),
    ),
    Route(
        "get",
        "/v1/tenants/{name}",
        tenant_routes.get_one,
        "One tenant (operator keys only)",
        {"200": tenant_routes.TenantView},
        scope="admin",
        operator=True,
        params=(TENANT_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Route(
        "patch",
        "/v1/tenants/{name}",
        tenant_routes.patch,
        "Enable or disable a tenant, set its providers and send limits (operator keys only)",
        {"200": tenant_routes.TenantView},
        scope="admin",
        operator=True,
        body=tenant_routes.TenantPatch,
        params=(TENANT_PATH,),
        errors=("401", "403", "404", "408", "422", "503"),
    ),
    Route(
        "post",
        "/v1/tenants/{name}/numbers",
        tenant_routes.add_number,
        "A number or sender id becomes the tenant's: replies to it are its (operator keys only)",
        {"201": tenant_routes.TenantView},
        scope="admin",
        operator=True,
        body=tenant_routes.NumberIn,
        params=(TENANT_PATH,),
        errors=("401", "403", "404", "408", "409", "422", "503"),
    ),
    Route(
        "delete",
        "/v1/tenants/{name}/numbers/{number}",
        tenant_routes.remove_number,
        "A number is the tenant's no longer (operator keys only)",
        {"204": None},
        scope="admin",
        operator=True,
        params=(TENANT_PATH, Param("number", "path", required=True)),
        errors=("401", "403", "404", "503"),
    ),
)


# Routes that exist only in sandbox mode (`serve --sandbox`, `make run`).
SANDBOX_ROUTES = (
    Route(
        "get",
        "/v1/sandbox/providers",
        sandbox_controls.list_all,
        "The simulated providers: how each is broken, and what each took (sandbox mode,"
        " operator keys only)",
        {"200": sandbox_controls.SimulatedProviders},
        scope="admin",
        operator=True,
        errors=("401", "403", "503"),
    ),
    Route(
        "get",
        "/v1/sandbox/sent",
        sandbox_controls.sent,
        "What each simulated provider took, per number (sandbox mode, operator keys only)",
        {"200": sandbox_controls.SentCounts},
        scope="admin",
        operator=True,
        errors=("401", "403", "503"),
    ),
    Route(
        "post",
        "/v1/sandbox/providers/{name}/inbound",
        sandbox_controls.inbound,
        "A simulated handset writes on its own: the simulated provider posts it to the hub in"
        " its inbound format (sandbox mode, operator keys only)",
        {"200": sandbox_controls.InboundSent},
        scope="admin",
        operator=True,
        body=sandbox_controls.InboundIn,
        params=(Param("name", "path", PROVIDER_NAME, required=True),),
        errors=("401", "403", "404", "408", "422", "503"),
    ),
    Route(
        "put",
        "/v1/sandbox/providers/{name}",
        sandbox_controls.put,
        "Break a simulated provider (down, slow, throttled, lossy; one country or all) or make"
        " it normal again (sandbox mode, operator keys only)",
        {"200": sandbox_controls.SimulatedProvider},
        scope="admin",
        operator=True,
        body=sandbox_controls.TroubleIn,
        params=(Param("name", "path", PROVIDER_NAME, required=True),),
        errors=("401", "403", "404", "408", "422", "503"),
    ),
)


def with_sandbox_tokens(settings: Settings, registry: Registry) -> Settings:
    """The simulated providers call back on the token path, as real ones are told to: with the
    token configured for a provider, else a random one for this run (so that `make run` needs
    no set-up and its callbacks are checked as in production). A provider opened on purpose
    (`ALLOW_UNAUTHENTICATED`) with no token stays open."""
    providers = dict(settings.providers)
    for name in registry:
        config = settings.provider(name)
        if config.callback_token is None and not config.allow_unauthenticated:
            token = SecretStr(secrets.token_urlsafe(32))
            providers[name] = config.model_copy(update={"callback_token": token})
    return settings.model_copy(update={"providers": providers})


def log_callback_auth(settings: Settings, registry: Registry) -> None:
    """At start, each provider whose callbacks nothing checks: an error when they are therefore
    refused, a warning when opened on purpose."""
    for name in sorted(registry):
        provider, config = registry[name], settings.provider(name)
        variable = name.upper()
        if config.signing_secret is not None and not provider.signs_callbacks:
            log.warning(
                "signing_secret_ignored",
                provider=name,
                hint=f"{name} signs no callback: {variable}__SIGNING_SECRET checks nothing",
            )
        if is_authenticated(provider, config):
            continue
        if config.allow_unauthenticated:
            log.warning(
                "callbacks_open_without_authentication",
                provider=name,
                hint=f"anyone may post its reports; set {variable}__CALLBACK_TOKEN and unset"
                f" {variable}__ALLOW_UNAUTHENTICATED",
            )
        else:
            log.error(
                "callbacks_refused_no_authentication",
                provider=name,
                hint=f"its callbacks are answered 401 callback_auth_not_configured: set"
                f" {variable}__CALLBACK_TOKEN (and/or {variable}__ALLOWED_IPS,"
                f" {variable}__SIGNING_SECRET where it signs), or"
                f" {variable}__ALLOW_UNAUTHENTICATED=true to accept anyone's",
            )


def simulated_providers(settings: Settings, registry: Registry) -> Sandbox:
    secrets = {
        name: secret.get_secret_value()
        for name in registry
        if (secret := settings.provider(name).signing_secret) is not None
    }
    return Sandbox(
        callback_urls={name: callback_url(settings, name) for name in registry},
        delay_s=settings.sandbox_delay_s,
        signing_secrets=secrets,
    )


def create_app(
    settings: Settings, dsn: str, registry: Registry = DEFAULT_REGISTRY
) -> web.Application:
    if settings.sandbox:
        settings = with_sandbox_tokens(settings, registry)
    app = web.Application(
        middlewares=[
            request_log_middleware,
            make_error_middleware(settings.retry_after_s),
            api_key_middleware,
        ],
        client_max_size=settings.body_limit_bytes,
    )
    expected = frozenset(
        m.version for m in load_migrations(migrations_dir(settings.migrations_dir))
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        spool = Spool(settings.spool_dir, settings.spool_max_bytes) if settings.spool_dir else None
        if spool is not None:
            spool.hold()  # SpoolInUse: another instance has it; nothing is opened yet
        db = await open_database(dsn, settings)
        ingest_db = await open_database(dsn, settings, max_size=settings.ingest_pool_size)
        read_db = (
            await open_database(settings.database_read_url, settings)
            if settings.database_read_url
            else db
        )
        await check_key(db, settings)
        http = aiohttp.ClientSession(headers={"User-Agent": "sms-receiver/0.1"})
        signal = Signal()
        writer = CallbackWriter(
            ingest_db,
            signal,
            writers=settings.ingest_writers,
            max_batch=settings.ingest_batch_max,
            max_events=settings.max_events_per_callback,
            max_queue=settings.ingest_queue_max,
        )
        app[AppContext.KEY] = AppContext(
            settings=settings,
            registry=registry,
            expected_migrations=expected,
            db=db,
            http=http,
            signal=signal,
            read_db=read_db,
        )
        refusals = Refusals(db, RateLimiter(settings.refusal_rate_per_s, settings.refusal_burst))
        app[callback_route.INGESTION] = callback_route.Ingestion(
            writer=writer, refusals=refusals, spool=spool
        )
        async with signal.connected(db, dsn):
            dispatcher = Dispatcher(db, settings, signal) if settings.dispatcher else None
            running = asyncio.create_task(dispatcher.run()) if dispatcher else None
            sweep = SilenceSweep(db, settings, signal) if settings.dispatcher else None
            sweeping = asyncio.create_task(sweep.run()) if sweep else None
            held = Scheduler(app[AppContext.KEY], app[ROUTE_TABLE]) if settings.dispatcher else None
            sending = asyncio.create_task(held.run()) if held else None
            watch = HealthWatch(db, settings, signal) if settings.dispatcher else None
            watching = asyncio.create_task(watch.run()) if watch else None
            upkeep = Upkeep(db, settings) if settings.dispatcher else None
            keeping = asyncio.create_task(upkeep.run()) if upkeep else None
            replaying = (
                asyncio.create_task(replay_forever(spool, ingest_db, registry, settings, signal))
                if spool
                else None
            )
            recording = asyncio.create_task(refusals.run())
            yield
            await app[RUNS].close()
            recording.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recording
            if replaying is not None:
                replaying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replaying
            if upkeep is not None and keeping is not None:
                await upkeep.stop()
                await keeping
            if held is not None and sending is not None:
                await held.stop()
                await sending
            if watch is not None and watching is not None:
                await watch.stop()
                await watching
            if sweep is not None and sweeping is not None:
                await sweep.stop()
                await sweeping
            if dispatcher is not None and running is not None:
                await dispatcher.stop()
                await running
        await writer.close()
        await http.close()
        await ingest_db.close()
        if read_db is not db:
            await read_db.close()
        await db.close()
        if spool is not None:
            spool.release()

    async def end_streams(app: web.Application) -> None:
        app[feed.STOPPING].set()
        app[AppContext.KEY].signal.fire()

    app[feed.STOPPING] = asyncio.Event()
    app[feed.OPEN_STREAMS] = Counter()
    app[ROUTE_TABLE] = RouteTable(settings)
    app[RUNS] = BackgroundRuns(dsn)
    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(end_streams)
    routes = ROUTES + (SANDBOX_ROUTES if settings.sandbox else ())
    add_routes(app, routes)
    add_console(app)
    app[openapi.OPENAPI] = openapi.document(
        routes,
        openapi.known_values(
            registry, {name: of.kind for name, of in settings.destinations.items()}
        ),
    )
    if settings.sandbox:
        sandbox = simulated_providers(settings, registry)
        app[SANDBOX_KEY] = sandbox  # the sandbox's controls reach it from the hub's routes
        app.add_subapp("/sandbox", sandbox_app(sandbox))
    if not settings.api_auth:
        log.warning("api_keys_not_required", hint="set API_AUTH=true outside a laptop")
    log_callback_auth(settings, registry)
    return app
