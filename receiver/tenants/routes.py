"""/v1/tenants (operator keys only): the tenants, their settings and the numbers they own."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote

import asyncpg
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from receiver.context import AppContext
from receiver.http.bodies import read_model
from receiver.http.errors import Conflict, NotFound, ReceiverError, Unprocessable
from receiver.http.fields import (
    TENANT_NAME_PATTERN,
    NumberOrSender,
    ProviderName,
    is_e164,
    is_sender_id,
    plain_text,
)
from receiver.storage import tenants
from receiver.storage.tenants import TenantError

TenantNameDoc = WithJsonSchema({"type": "string", "pattern": TENANT_NAME_PATTERN})


class TenantSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    providers: list[ProviderName] | None = Field(default=None, max_length=50)
    send_rate_per_s: float | None = Field(default=None, gt=0, le=1_000_000)
    send_burst: int | None = Field(default=None, gt=0, le=1_000_000)
    daily_recipients: int | None = Field(default=None, ge=0, le=1_000_000_000)
    # Sent back to a HELP or INFO reply (null: nothing is sent).
    help_reply: Annotated[str, AfterValidator(plain_text)] | None = Field(
        default=None, min_length=1, max_length=640
    )


class TenantIn(TenantSettings):
    # Bounded loosely: the name rule (63 characters at most) is the storage's, so that every
    # bad name is refused alike, as `invalid_tenant_name`.
    name: Annotated[str, Field(max_length=1024, description=tenants.NAME_RULE), TenantNameDoc]


class TenantPatch(TenantSettings):
    enabled: bool | None = None


class NumberIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    number: NumberOrSender


class TenantView(BaseModel):
    name: str
    enabled: bool
    providers: list[str] | None  # null: every configured provider
    send_rate_per_s: float | None  # null: SEND_RATE_PER_S
    send_burst: int | None  # null: SEND_BURST
    daily_recipients: int | None  # null: SEND_DAILY_RECIPIENTS
    help_reply: str | None  # null: a HELP reply gets no answer
    numbers: list[str]
    keys: int  # live API keys
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None


class TenantList(BaseModel):
    data: list[TenantView]


# How each refusal of the storage's is answered.
_STATUS = {
    "invalid_tenant_name": 422,
    "unknown_provider": 422,
    "tenant_exists": 409,
    "number_taken": 409,
    "not_found": 404,
}


# The body field each 422 is about.
_FIELD = {"invalid_tenant_name": "name", "unknown_provider": "providers"}


def refusal(error: TenantError) -> ReceiverError:
    status = _STATUS.get(error.code, 422)
    field = _FIELD.get(error.code)
    details = [{"field": field, "error": error.message}] if field else None
    answer = {404: NotFound, 409: Conflict, 422: Unprocessable}[status](
        error.message, details=details
    )
    answer.code = error.code
    return answer


def tenant_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": row["name"],
        "enabled": row["enabled"],
        "providers": list(row["providers"]) if row["providers"] is not None else None,
        "send_rate_per_s": row["send_rate_per_s"],
        "send_burst": row["send_burst"],
        "daily_recipients": row["daily_recipients"],
        "help_reply": row["help_reply"],
        "numbers": list(row["numbers"]),
        "keys": row["keys"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "disabled_at": row["disabled_at"].isoformat() if row["disabled_at"] else None,
    }


def owned_number(text: str) -> str:
    """A number or sender id as replies name it: E.164 for a phone number, else a sender id;
    anything else is a 422."""
    if is_e164(text) or is_sender_id(text):
        return text
    raise Unprocessable(
        f"{text[:40]!r} is neither an E.164 number (with +) nor a sender id",
        details=[
            {
                "field": "number",
                "error": "an E.164 number, or a sender id of 1 to 11 letters, digits and"
                " spaces with a letter",
            }
        ],
    )


def _name(request: web.Request) -> str:
    return request.match_info["name"]


async def _one(connection: Any, name: str) -> dict[str, Any]:
    row = await tenants.get_tenant(connection, name)
    if row is None:
        raise NotFound(f"no tenant named {name[:80]!r}")
    return tenant_json(row)


async def list_all(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.db.connection() as connection:
        rows = await tenants.list_tenants(connection)
    return web.json_response({"data": [tenant_json(row) for row in rows]})


async def create(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming = await read_model(request, TenantIn)
    given = incoming.model_dump(exclude={"name"}, exclude_unset=True)
    try:
        settings = tenants.settings_of(given, sorted(context.registry))
        async with context.db.connection() as connection:
            await tenants.create_tenant(connection, incoming.name, settings)
            view = await _one(connection, incoming.name)
    except TenantError as error:
        raise refusal(error) from None
    return web.json_response(view, status=201)


async def get_one(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.db.connection() as connection:
        return web.json_response(await _one(connection, _name(request)))


async def patch(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming = await read_model(request, TenantPatch)
    changes = incoming.model_dump(exclude_unset=True)
    if changes.get("enabled", True) is None:
        del changes["enabled"]
    try:
        changes = tenants.settings_of(changes, sorted(context.registry))
    except TenantError as error:
        raise refusal(error) from None
    async with context.db.connection() as connection:
        row = await tenants.update_tenant(connection, _name(request), changes)
        if row is None:
            raise NotFound(f"no tenant named {_name(request)[:80]!r}")
        view = await _one(connection, _name(request))
    return web.json_response(view)


async def add_number(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming = await read_model(request, NumberIn)
    number = owned_number(incoming.number)
    try:
        async with context.db.connection() as connection:
            await tenants.add_number(connection, _name(request), number)
            view = await _one(connection, _name(request))
    except TenantError as error:
        raise refusal(error) from None
    return web.json_response(view, status=201)


async def remove_number(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    number = unquote(request.match_info["number"])
    try:
        number = owned_number(number)
    except Unprocessable:
        raise NotFound(f"{number[:40]!r} is not a number of this tenant") from None
    async with context.db.connection() as connection:
        removed = await tenants.remove_number(connection, _name(request), number)
    if not removed:
        raise NotFound(f"{number} is not a number of the tenant {_name(request)[:80]!r}")
    return web.Response(status=204)
