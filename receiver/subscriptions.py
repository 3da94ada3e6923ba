"""/v1/subscriptions and /v1/deliveries: who receives the re-emitted events, and what to
deliver again."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from aiohttp import web
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from normalizers.events import EventType, Status
from receiver import outbox
from receiver.apikeys import requires
from receiver.bodies import read_body
from receiver.context import AppContext
from receiver.errors import NotFound, ReceiverError

SECRET_OVERLAP_S = 24 * 3600  # the old secret still signs for a day after a rotation


class Unprocessable(ReceiverError):
    status = 422
    code = "validation_error"


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    return text


PlainText = Annotated[str, AfterValidator(_no_nul)]
ProviderName = Annotated[str, StringConstraints(max_length=50), AfterValidator(_no_nul)]
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_types: list[EventType] | None = None
    providers: list[ProviderName] | None = None
    statuses: list[Status] | None = None


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl
    filters: Filters = Field(default_factory=Filters)
    description: PlainText | None = Field(default=None, max_length=500)
    enabled: bool = True


class SubscriptionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl | None = None
    filters: Filters | None = None
    description: PlainText | None = Field(default=None, max_length=500)
    enabled: bool | None = None


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: datetime
    event_types: list[EventType] | None = None
    providers: list[ProviderName] | None = None
    statuses: list[Status] | None = None

    @field_validator("since")
    @classmethod
    def sane_since(cls, moment: datetime) -> datetime:
        if moment.tzinfo is None:
            raise ValueError("needs a time zone (use Z for UTC)")
        if not EARLIEST <= moment <= datetime.now(UTC):
            raise ValueError("must be between 1970 and now")
        return moment


def new_secret() -> str:
    """`whsec_` and base64 of 32 random bytes (Standard Webhooks)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _filters(filters: Filters | ReplayIn) -> dict[str, Any]:
    data = filters.model_dump(mode="json", include={"event_types", "providers", "statuses"})
    return {name: value for name, value in data.items() if value is not None}


def subscription_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "url": row["url"],
        "filters": _json(row["filters"]),
        "description": row["description"],
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "failing_since": row["failing_since"].isoformat() if row["failing_since"] else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _model(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await read_body(request))
    except ValidationError as error:
        details = [
            {"field": ".".join(map(str, e["loc"])) or "body", "error": e["msg"]}
            for e in error.errors()
        ]
        raise Unprocessable("the request is not valid", details=details) from None


def _id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise NotFound("no such subscription") from None


@requires("admin")
async def create(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming: SubscriptionIn = await _model(request, SubscriptionIn)
    secret = new_secret()
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        row = await outbox.create_subscription(
            conn,
            uuid.uuid4(),
            str(incoming.url),
            secret,
            _filters(incoming.filters),
            incoming.description,
            incoming.enabled,
        )
    # The secret is shown once, here; it is never returned again.
    return web.json_response(subscription_json(row) | {"secret": secret}, status=201)


@requires("admin")
async def list_all(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        rows = await outbox.list_subscriptions(conn)
    return web.json_response({"data": [subscription_json(row) for row in rows]})


@requires("admin")
async def get_one(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        row = await outbox.get_subscription(conn, _id(request))
    if row is None:
        raise NotFound("no such subscription")
    return web.json_response(subscription_json(row))


@requires("admin")
async def patch(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming: SubscriptionPatch = await _model(request, SubscriptionPatch)
    changes: dict[str, Any] = {}
    fields = incoming.model_fields_set
    if "url" in fields and incoming.url is not None:
        changes["url"] = str(incoming.url)
    if "filters" in fields and incoming.filters is not None:
        changes["filters"] = _filters(incoming.filters)
    if "description" in fields:
        changes["description"] = incoming.description
    if "enabled" in fields and incoming.enabled is not None:
        changes["enabled"] = incoming.enabled
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        row = await outbox.update_subscription(conn, _id(request), changes)
    if row is None:
        raise NotFound("no such subscription")
    return web.json_response(subscription_json(row))


@requires("admin")
async def delete(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        deleted = await outbox.delete_subscription(conn, _id(request))
    if not deleted:
        raise NotFound("no such subscription")
    return web.Response(status=204)


@requires("admin")
async def rotate(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    secret = new_secret()
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        rotated = await outbox.rotate_secret(conn, _id(request), secret, SECRET_OVERLAP_S)
    if not rotated:
        raise NotFound("no such subscription")
    return web.json_response({"secret": secret, "previous_secret_valid_for_s": SECRET_OVERLAP_S})


@requires("admin")
async def replay(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming: ReplayIn = await _model(request, ReplayIn)
    subscription_id = _id(request)
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        if await outbox.get_subscription(conn, subscription_id) is None:
            raise NotFound("no such subscription")
        queued = await outbox.replay(conn, subscription_id, incoming.since, _filters(incoming))
    context.signal.fire()
    return web.json_response({"queued": queued}, status=202)


@requires("admin")
async def retry(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    raw_id = request.match_info["id"]
    if not (raw_id.isascii() and raw_id.isdigit() and int(raw_id) <= 2**63 - 1):
        raise NotFound("no such delivery")
    delivery_id = int(raw_id)
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        queued = await outbox.retry_delivery(conn, delivery_id)
    if not queued:
        raise NotFound("no such delivery, or it is being delivered right now")
    context.signal.fire()
    return web.json_response({"queued": True}, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/subscriptions", create)
    app.router.add_get("/v1/subscriptions", list_all)
    app.router.add_get("/v1/subscriptions/{id}", get_one)
    app.router.add_patch("/v1/subscriptions/{id}", patch)
    app.router.add_delete("/v1/subscriptions/{id}", delete)
    app.router.add_post("/v1/subscriptions/{id}/rotate-secret", rotate)
    app.router.add_post("/v1/subscriptions/{id}/replay", replay)
    app.router.add_post("/v1/deliveries/{id}/retry", retry)
