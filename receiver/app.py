"""The aiohttp application: routes in one place, middlewares, and the resources its lifecycle
owns (the database pool)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import structlog
from aiohttp import web

from normalizers.registry import DEFAULT_REGISTRY, Registry
from receiver import benchroutes, feed, messages, openapi, operator, subscriptions
from receiver.apikeys import api_key_middleware
from receiver.auth import is_unauthenticated
from receiver.callbacks import expect_within_limit, handle_callback
from receiver.config import Settings
from receiver.context import AppContext
from receiver.database import create_pool
from receiver.dispatcher import Dispatcher
from receiver.errors import make_error_middleware
from receiver.feed import STOPPING
from receiver.groupcommit import CallbackWriter
from receiver.health import healthz, readyz
from receiver.ids import request_id as new_request_id
from receiver.metrics import REQUESTS, metrics
from receiver.migrate import load_migrations, migrations_dir
from receiver.ratelimit import RateLimiter
from receiver.sandbox import sandbox_app
from receiver.sandbox.common import Sandbox
from receiver.sending import callback_url, handle_send
from receiver.signal import Signal
from receiver.spool import Spool, replay_forever

log = structlog.get_logger("receiver.http")

# Metric labels must not come from what a client invents.
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# A caller's request id is echoed and logged only when it is short and plain.
_REQUEST_ID = re.compile(r"[\w.:-]{1,128}")


@web.middleware
async def request_log_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """One JSON log line per request, with whatever the handler bound (provider, outcome...)."""
    given = request.headers.get("X-Request-ID", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else new_request_id()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    # Stays so only if the handler never returned: cancelled (client gone, shutdown timeout).
    status: int | str = "cancelled"
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        REQUESTS.labels(method, route, str(status)).observe(elapsed)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            latency_ms=round(elapsed * 1000, 2),
        )
        structlog.contextvars.clear_contextvars()


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
        pool = await create_pool(dsn, settings)
        http = aiohttp.ClientSession(headers={"User-Agent": "sms-receiver/0.1"})
        signal = Signal()
        spool = Spool(settings.spool_dir, settings.spool_max_bytes) if settings.spool_dir else None
        writer = CallbackWriter(
            pool,
            signal,
            writers=settings.ingest_writers,
            max_batch=settings.ingest_batch_max,
            max_events=settings.max_events_per_callback,
            max_queue=settings.ingest_queue_max,
            acquire_timeout_s=settings.db_acquire_timeout_s,
        )
        app[AppContext.KEY] = AppContext(
            settings=settings,
            registry=registry,
            expected_migrations=expected,
            pool=pool,
            http=http,
            signal=signal,
            callbacks=writer,
            send_limiter=RateLimiter(settings.send_rate_per_s, settings.send_burst),
            spool=spool,
        )
        async with signal.connected(pool, dsn):
            dispatcher = Dispatcher(pool, settings, signal) if settings.dispatcher else None
            running = asyncio.create_task(dispatcher.run()) if dispatcher else None
            replaying = (
                asyncio.create_task(replay_forever(spool, pool, registry, settings, signal))
                if spool
                else None
            )
            yield
            if replaying is not None:
                replaying.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replaying
            if dispatcher is not None and running is not None:
                await dispatcher.stop()
                await running
        await writer.close()
        await http.close()
        await pool.close()

    async def end_streams(app: web.Application) -> None:
        app[STOPPING].set()
        app[AppContext.KEY].signal.fire()

    app[STOPPING] = asyncio.Event()
    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(end_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/messages", handle_send)
    subscriptions.add_routes(app)
    messages.add_routes(app)
    operator.add_routes(app)
    openapi.add_routes(app)
    feed.add_routes(app)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for path in ("/callbacks/{provider}", "/callbacks/{provider}/{token}"):
        app.router.add_route("GET", path, handle_callback, expect_handler=expect_within_limit)
        app.router.add_route("POST", path, handle_callback, expect_handler=expect_within_limit)
    if settings.bench_routes:
        benchroutes.add_routes(app)
    if settings.sandbox:
        app.add_subapp("/sandbox", sandbox_app(simulated_providers(settings, registry)))
    if not settings.api_auth:
        log.warning("api_keys_not_required", hint="set API_AUTH=true outside a laptop")
    for name in sorted(registry):
        if is_unauthenticated(settings.provider(name)):
            log.warning(
                "callbacks_not_authenticated",
                provider=name,
                hint=f"set {name.upper()}__CALLBACK_TOKEN and/or {name.upper()}__ALLOWED_IPS",
            )
    return app
