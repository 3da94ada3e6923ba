"""The console's pages: the latest messages (search, keyset paging, live updates from the event
stream), one message with each recipient's timeline, one raw callback; the login and logout.
Each page needs the scope of the API route it mirrors, and reads through the same functions,
as the same asker: a tenant's key sees its tenant's data alone; an operator key sees every
tenant's (with a tenant column and filter) and the operator's pages (callbacks, tenants)."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web

from normalizers.events import Status
from receiver.console import charts
from receiver.context import AppContext
from receiver.corrections.routes import run_json
from receiver.corrections.run import Tally
from receiver.delivery.subscriptions import subscription_json
from receiver.http import params
from receiver.http.apikeys import ASKER, key_of
from receiver.http.errors import ReceiverError
from receiver.http.fields import is_e164, typed_e164
from receiver.http.session import (
    CSRF_FIELD,
    PAGE_HEADERS,
    clear_session,
    cookie_secret,
    csrf_ok,
    csrf_token,
    set_session,
)
from receiver.optouts.routes import optout_page
from receiver.query.messages import message_page, message_view
from receiver.query.raw_callbacks import raw_callback_page, raw_callback_view, refusal_page
from receiver.routing.routes import change_json, route_json
from receiver.storage import corrections as correction_store
from receiver.storage import events, outbox, provider_health, routes, stats
from receiver.storage import messages as storage_messages
from receiver.storage import tenants as storage_tenants
from receiver.storage.apikeys import ApiKey, list_keys
from receiver.storage.tenants import Asker

log = structlog.get_logger("receiver.console.pages")

HOME = "/console"
LOGIN = "/console/login"


class Viewer:
    """Who looks at the console: a key (keys on), or anyone (API_AUTH=false)."""

    def __init__(self, key: ApiKey | None, secret: str | None) -> None:
        self.key = key
        self.csrf = csrf_token(secret) if secret else ""

    @property
    def name(self) -> str | None:
        return self.key.name if self.key else None

    @property
    def asker(self) -> Asker:
        return self.key.asker if self.key else Asker.OPERATOR

    @property
    def tenant(self) -> str | None:
        """The tenant whose console this is; None: the operator's."""
        return self.asker.tenant

    def may(self, scope: str, operator: bool = False) -> bool:
        if operator and not self.asker.is_operator:
            return False
        return self.key is None or self.key.allows(scope)


async def viewer(request: web.Request, scope: str, operator: bool = False) -> Viewer:
    """The console's user if it may see a page needing `scope` (and an operator key, when
    `operator`): without a session, to the login page; with a key lacking the scope, of a
    disabled tenant, or a tenant's on an operator's page, a 403 page. Who is asking is set on
    the request, as the API's key check does."""
    context: AppContext = request.app[AppContext.KEY]
    if not context.settings.api_auth:
        request[ASKER] = Asker.OPERATOR
        return Viewer(None, None)
    secret = cookie_secret(request)
    key = await key_of(context, secret) if secret is not None else None
    if key is None:
        raise web.HTTPSeeOther(f"{LOGIN}?next={request.path_qs}")
    found = Viewer(key, secret)
    if key.disabled_tenant is not None:
        raise Refused(f"the tenant {key.disabled_tenant!r} of this key is disabled", found)
    if not found.may(scope):
        raise Refused(f"this key ({key.name}) lacks the {scope!r} scope this page needs", found)
    if not found.may(scope, operator):
        raise Refused(f"this page is the operator's: the key {key.name} is a tenant's", found)
    request[ASKER] = found.asker
    return found


class Refused(Exception):
    """The key may not see the page: said on a page of its own (403)."""

    def __init__(self, reason: str, who: Viewer) -> None:
        super().__init__(reason)
        self.who = who


Page = Callable[[web.Request, Viewer], Awaitable[web.Response]]


def page(
    scope: str, operator: bool = False
) -> Callable[[Page], Callable[[web.Request], Awaitable[web.Response]]]:
    """A console page needing `scope` (the scope of the API route it mirrors), and an operator
    key when `operator`."""

    def wrap(handler: Page) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def run(request: web.Request) -> web.Response:
            try:
                who = await viewer(request, scope, operator)
            except Refused as refused:
                return render("forbidden.html", request, refused.who, 403, reason=str(refused))
            return await handler(request, who)

        return run

    return wrap


def render(
    template: str, request: web.Request, who: Viewer, status: int = 200, **values: Any
) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    response = aiohttp_jinja2.render_template(
        template,
        request,
        {"who": who, "keys_on": context.settings.api_auth, "path_qs": request.path_qs, **values},
        status=status,
    )
    response.headers.update(PAGE_HEADERS)
    return response


def _as_e164(request: web.Request, name: str) -> None:
    """A number a person typed in a search box (spaces, 00, no +) asked again as the API takes
    it, E.164; anything else goes on to the API's own 400, said on the page."""
    typed = request.query.get(name)
    if not typed or is_e164(typed):
        return
    e164 = typed_e164(typed)
    if e164 is not None:
        kept = [(key, e164 if key == name else value) for key, value in request.query.items()]
        raise web.HTTPSeeOther(f"{request.path}?{urlencode(kept)}")


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound(HOME)


@page("read")
async def messages(request: web.Request, who: Viewer) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    _as_e164(request, "to")
    blank = [name for name, value in request.query.items() if not value]
    if blank:
        # The search form sends its fields left at "any" empty: they filter nothing (the API
        # refuses an empty filter; the page asks again without them).
        kept = [(name, value) for name, value in request.query.items() if value]
        raise web.HTTPSeeOther(f"{HOME}?{urlencode(kept)}" if kept else HOME)
    error = None
    try:
        page = await message_page(request)
    except ReceiverError as refused:  # a bad filter: said on the page, not a JSON error
        page, error = {"data": [], "next_cursor": None}, str(refused)
    if request.query.get("fragment") == "rows":
        return render("message_rows.html", request, who, page=page)
    async with context.db.connection() as connection:
        live_after = await events.feed_now(connection)
        tenant_names = (
            await storage_tenants.tenant_names(connection) if who.asker.is_operator else []
        )
    kept = [(k, v) for k, v in request.query.items() if k not in ("cursor", "fragment") and v]
    return render(
        "messages.html",
        request,
        who,
        page=page,
        error=error,
        live_after=live_after,
        query=request.query,
        query_without_cursor=urlencode(kept) + "&" if kept else "",
        providers=sorted(context.registry),
        statuses=[str(status) for status in Status],
        tenants=tenant_names,
    )


@page("read")
async def message(request: web.Request, who: Viewer) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]

    message_id = params.uuid_or_none(request.match_info["id"])
    view = None
    if message_id is not None:
        async with context.read_db.connection() as connection:
            view = await message_view(connection, message_id, who.asker)
    if view is None:
        return render("missing.html", request, who, status=404, what="message")
    return render("message.html", request, who, message=view, timelines=timelines(view))


def timelines(view: dict[str, Any]) -> list[dict[str, Any]]:
    """Each recipient with its events in order, each saying the status it moved from and to."""
    by_recipient: dict[str | None, list[dict[str, Any]]] = {}
    for event in view["events"]:
        by_recipient.setdefault(event["recipient"], []).append(event)
    shown = []
    for recipient in view["recipients"]:
        events = sorted(by_recipient.get(recipient["to"], []), key=lambda e: e["sequence"] or 0)
        before = None
        steps = []
        for event in events:
            after = event["recipient_status"] or event["status"]
            steps.append({"event": event, "moved_from": before, "moved_to": after})
            before = after
        shown.append({"recipient": recipient, "steps": steps})
    return shown


@page("read")
async def find(request: web.Request, who: Viewer) -> web.Response:
    """A message by its provider's id: to its page, or a page saying nothing is known."""
    context: AppContext = request.app[AppContext.KEY]
    provider = request.query.get("provider", "")
    pmid = request.query.get("provider_message_id", "").strip()
    owner = None
    if provider in context.registry and pmid:
        async with context.read_db.connection() as connection:
            recipients = await storage_messages.recipients_of_provider_id(
                connection, provider, pmid, who.asker
            )
        owner = next((r["message_id"] for r in recipients if r["message_id"]), None)
    if owner is None:
        return render("missing.html", request, who, status=404, what="message with that id")
    raise web.HTTPSeeOther(f"/console/messages/{owner}")


@page("admin", operator=True)
async def callbacks(request: web.Request, who: Viewer) -> web.Response:
    """Callbacks that could not be read (each with a reprocess action) and those refused."""
    unreadable = await raw_callback_page(request, outcome="unparsed")
    refused = await refusal_page(request)
    return render(
        "callbacks.html", request, who, active="callbacks", unreadable=unreadable, refused=refused
    )


@page("admin")
async def subscriptions(request: web.Request, who: Viewer) -> web.Response:
    """Each subscription's health, with the API's actions: enable or disable, rotate its secret,
    replay, and retry a delivery given up on."""
    context: AppContext = request.app[AppContext.KEY]
    async with context.read_db.connection() as connection:
        rows = await outbox.list_subscriptions(connection, who.asker)
        health = await outbox.subscription_health(connection, [row["id"] for row in rows])
        failed = await outbox.failed_deliveries(connection, 20, who.asker)
    listed = [subscription_json(row) | {"health": health.get(row["id"], {})} for row in rows]
    return render(
        "subscriptions.html",
        request,
        who,
        active="subscriptions",
        subscriptions=listed,
        failed=failed,
    )


# How far back the providers page looks, a bar a day, and how often it is computed again.
PROVIDER_DAYS = 14
PROVIDER_REFRESH_S = 60.0


class ProviderSummary:
    """The providers page's figures for one asker (a tenant's traffic, or every tenant's for the
    operator), computed at most once a PROVIDER_REFRESH_S: the first request waits for them,
    later ones answer from the last ones while a refresh runs."""

    def __init__(self, asker: Asker) -> None:
        self.asker = asker
        self.value: tuple[list[dict[str, Any]], list[datetime]] | None = None
        self.computed_at: datetime | None = None
        self.started = 0.0  # time.monotonic() of the last computation's start
        self.lock = asyncio.Lock()
        self.refreshing: set[asyncio.Task[None]] = set()

    async def current(self, app: web.Application) -> tuple[list[dict[str, Any]], list[datetime]]:
        if self.value is None:
            async with self.lock:
                if self.value is None:
                    await self._compute(app)  # a database error is the page's (503)
        elif time.monotonic() - self.started > PROVIDER_REFRESH_S and not self.lock.locked():
            self.started = time.monotonic()  # one refresh at a time
            task = asyncio.get_running_loop().create_task(self._refresh(app))
            self.refreshing.add(task)
            task.add_done_callback(self.refreshing.discard)
        assert self.value is not None
        return self.value

    async def _compute(self, app: web.Application) -> None:
        self.started = time.monotonic()
        self.value = await provider_summary(app, self.asker)
        self.computed_at = datetime.now(UTC)

    async def _refresh(self, app: web.Application) -> None:
        async with self.lock:
            try:
                await self._compute(app)
            except Exception as error:  # the database is away: the last figures stay
                log.warning("provider_summary_failed", error=repr(error))


# One summary per asker that opened the page (the operator, and each tenant).
PROVIDER_SUMMARY = web.AppKey("provider_summary", dict[Asker, ProviderSummary])


@page("read")
async def providers(request: web.Request, who: Viewer) -> web.Response:
    """Per provider, a bar a day for the last PROVIDER_DAYS: delivery rate, median time to a
    real final status, inbound replies; and its unparsed and refused callbacks. Computed at
    most once a PROVIDER_REFRESH_S per instance (it reads every recipient of those days: 0.3 s
    at 200,000), the page served from the last result meanwhile."""
    summary = request.app[PROVIDER_SUMMARY].setdefault(who.asker, ProviderSummary(who.asker))
    shown, days = await summary.current(request.app)
    health: dict[str, list[Any]] = {}
    splits: dict[str, list[dict[str, Any]]] = {}
    if who.asker.is_operator:  # routing spans every tenant's traffic: the operator's view
        context: AppContext = request.app[AppContext.KEY]
        async with context.read_db.connection() as connection:
            for row in await provider_health.states(connection):
                health.setdefault(row["provider"], []).append(row)
            for row in await routes.route_split(connection, SPLIT_MINUTES):
                splits.setdefault(row["route"], []).append(dict(row))
        for parts in splits.values():
            total = sum(part["n"] for part in parts)
            for part in parts:
                part["share"] = 100.0 * part["n"] / total
    return render(
        "providers.html",
        request,
        who,
        active="providers",
        providers=shown,
        first_day=days[0],
        last_day=days[-1],
        computed_at=summary.computed_at,
        health=health,
        splits=splits,
        split_minutes=SPLIT_MINUTES,
    )


@page("read")
async def opt_outs(request: web.Request, who: Viewer) -> web.Response:
    """The viewer's opt-out list, searched by number, with add and remove through the API."""
    _as_e164(request, "number")
    number = request.query.get("number", "").strip()
    if "number" in request.query and not number:
        raise web.HTTPSeeOther("/console/opt-outs")
    error = None
    entries: list[dict[str, Any]] = []
    next_cursor = None
    try:
        found = await optout_page(request)
        entries, next_cursor = found["data"], found["next_cursor"]
    except ReceiverError as refused:  # a bad number: said on the page
        error = str(refused)
    return render(
        "optouts.html",
        request,
        who,
        active="optouts",
        entries=entries,
        next_cursor=next_cursor,
        number=number,
        error=error,
    )


# The routes' live split on the Providers page: over the recipients of the last this many minutes.
SPLIT_MINUTES = 15


@page("admin", operator=True)
async def send_routes(request: web.Request, who: Viewer) -> web.Response:
    """The routes in the order they are tried, an editor (the API's own PUT and DELETE), and
    the latest changes."""
    context: AppContext = request.app[AppContext.KEY]
    async with context.read_db.connection() as connection:
        rows = await routes.list_routes(connection)
        changes = await routes.route_changes(connection, None, 20)
    listed = [route_json(row) for row in rows]
    for route in listed:
        route["editable"] = json.dumps(
            {k: v for k, v in route.items() if k not in ("created_at", "updated_at")}, indent=2
        )
    example = {
        "name": "uk",
        "match": {"country": ["GB"]},
        "providers": sorted(context.registry)[:2],
    }
    return render(
        "routes.html",
        request,
        who,
        active="routes",
        routes=listed,
        changes=[change_json(row) for row in changes],
        example=json.dumps(example, indent=2),
    )


@page("admin", operator=True)
async def corrections_page(request: web.Request, who: Viewer) -> web.Response:
    """Correction runs: a dry run started from a form, its findings shown, and its apply (the
    API's own routes) a button beside them."""
    context: AppContext = request.app[AppContext.KEY]
    async with context.db.connection() as connection:
        rows = await correction_store.list_runs(connection, 20)
    runs = [run_json(row) for row in rows]
    for run in runs:
        run["tally"] = Tally.of_run(run["counts"], run["examples"]).summary(run["mode"])
    return render(
        "corrections.html",
        request,
        who,
        active="corrections",
        runs=runs,
        providers=sorted(context.registry),
    )


async def provider_summary(
    app: web.Application, asker: Asker
) -> tuple[list[dict[str, Any]], list[datetime]]:
    context: AppContext = app[AppContext.KEY]
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=PROVIDER_DAYS - 1)
    days = [since + timedelta(days=n) for n in range(PROVIDER_DAYS)]
    async with context.read_db.connection() as connection:
        daily = await stats.daily_stats(connection, since, asker)
        inbound = await stats.daily_inbound(connection, since, asker)
        # Unparsed and refused callbacks are nobody's: the operator's figures alone.
        unusable = (
            await stats.unusable_callbacks(connection, since, None) if asker.is_operator else []
        )
    by_day: dict[tuple[str, datetime], Any] = {
        (row["provider"], row["day"].replace(tzinfo=UTC)): row for row in daily
    }
    replies = {(row["provider"], row["day"].replace(tzinfo=UTC)): row["n"] for row in inbound}
    bad = {(row["provider"], row["outcome"]): row["n"] for row in unusable}
    shown = []
    for name in sorted(context.registry):
        rows = [by_day.get((name, day)) for day in days]
        rates = [
            100.0 * row["delivered"] / row["final"] if row and row["final"] else None
            for row in rows
        ]
        latencies = [row["p50_s"] if row and row["p50_s"] is not None else None for row in rows]
        counts = [float(replies.get((name, day), 0)) for day in days]
        recipients = sum(row["recipients"] for row in rows if row)
        shown.append(
            {
                "name": name,
                "recipients": recipients,
                "delivered": sum(row["delivered"] for row in rows if row),
                "final": sum(row["final"] for row in rows if row),
                "inbound": int(sum(counts)),
                "unparsed": bad.get((name, "unparsed"), 0) if asker.is_operator else None,
                "refused": bad.get((name, "rejected"), 0) if asker.is_operator else None,
                "rate_chart": charts.bars(rates, 100.0, f"{name} delivery rate", "%"),
                "latency_chart": charts.bars(
                    latencies,
                    max([v for v in latencies if v is not None] or [1.0]),
                    f"{name} median seconds to a final status",
                    " s",
                ),
                "inbound_chart": charts.bars(
                    counts, max([*counts, 1.0]), f"{name} inbound replies"
                ),
            }
        )
    return shown, days


@page("admin", operator=True)
async def tenants(request: web.Request, who: Viewer) -> web.Response:
    """Every tenant: enabled or not, its providers, limits, numbers and keys (no secret)."""
    context: AppContext = request.app[AppContext.KEY]
    async with context.read_db.connection() as connection:
        rows = await storage_tenants.list_tenants(connection)
        keys = await list_keys(connection)
    by_tenant: dict[str | None, list[Any]] = {}
    for key in keys:
        if key["revoked_at"] is None:
            by_tenant.setdefault(key["tenant"], []).append(key)
    return render(
        "tenants.html",
        request,
        who,
        active="tenants",
        tenants=rows,
        keys=by_tenant,
        settings=context.settings,
    )


@page("admin")
async def raw_callback(request: web.Request, who: Viewer) -> web.Response:
    try:
        view = await raw_callback_view(request)
    except ReceiverError:
        return render("missing.html", request, who, status=404, what="raw callback")
    return render("raw.html", request, who, raw=view)


async def login_page(request: web.Request) -> web.Response:
    return render("login.html", request, Viewer(None, None), next=_next(request), error=None)


async def login(request: web.Request) -> web.Response:
    context: AppContext = request.app[AppContext.KEY]
    form = await request.post()
    secret = str(form.get("key", "")).strip()
    key = await key_of(context, secret)
    if key is None or key.disabled_tenant is not None:
        return render(
            "login.html",
            request,
            Viewer(None, None),
            status=401 if key is None else 403,
            next=_next(request),
            error=(
                "unknown or revoked API key"
                if key is None
                else f"the tenant {key.disabled_tenant!r} of this key is disabled"
            ),
        )
    response = web.HTTPSeeOther(_next(request))
    set_session(response, secret, secure=request.secure)
    raise response


async def logout(request: web.Request) -> web.Response:
    form = await request.post()
    secret = cookie_secret(request)
    if secret is not None and not csrf_ok(secret, str(form.get(CSRF_FIELD, ""))):
        raise web.HTTPForbidden(text="the form's CSRF token is missing or wrong")
    response = web.HTTPSeeOther(LOGIN)
    clear_session(response)
    raise response


def _next(request: web.Request) -> str:
    """Where to go after logging in: a path of the console only (never another site)."""
    target = request.query.get("next", HOME)
    return target if target.startswith("/console") and "//" not in target else HOME


def add_console(app: web.Application) -> None:
    """The console's routes and templates, on the hub's application."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("receiver.console", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    app.router.add_get("/", index)
    app.router.add_get(HOME, messages)
    app.router.add_get("/console/find", find)
    app.router.add_get("/console/messages/{id}", message)
    app.router.add_get("/console/callbacks", callbacks)
    app.router.add_get("/console/subscriptions", subscriptions)
    app.router.add_get("/console/providers", providers)
    app.router.add_get("/console/tenants", tenants)
    app.router.add_get("/console/routes", send_routes)
    app.router.add_get("/console/opt-outs", opt_outs)
    app.router.add_get("/console/corrections", corrections_page)
    app[PROVIDER_SUMMARY] = {}
    app.router.add_get("/console/raw-callbacks/{id}", raw_callback)
    app.router.add_get(LOGIN, login_page)
    app.router.add_post(LOGIN, login)
    app.router.add_post("/console/logout", logout)
    app.router.add_static("/console/static", Path(__file__).parent / "static")
    # Swagger UI's files for /docs, from the package that ships them (nothing from a CDN).
    app.router.add_static(
        "/docs/assets", Path(str(importlib.resources.files("swagger_ui"))) / "static"
    )
