"""/v1/opt-outs: the asker's suppression list (a tenant's own entries; the operator's, every
one): list, add, remove."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import asker_of
from receiver.http.bodies import read_model
from receiver.http.errors import Forbidden, NotFound
from receiver.http.fields import E164, NumberOrSender, TenantName
from receiver.storage import optouts, tenants
from receiver.storage.tenants import DEFAULT_TENANT


class OptOutIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    number: E164 = Field(description="the handset")
    # The number or sender id it may not be sent from; null: the whole tenant.
    sender: NumberOrSender | None = None
    tenant: TenantName | None = Field(default=None, description="operator keys only")


class OptOutView(BaseModel):
    id: int
    tenant: str | None  # null: a reply attributed to nobody (its sender number, for everyone)
    number: str | None  # null once erased (the entry keeps its keyed hash)
    sender: str | None  # null: the whole tenant
    source: str
    event_id: str | None  # the reply that asked for it
    created_at: datetime


class OptOutList(BaseModel):
    data: list[OptOutView]
    next_cursor: str | None


def opt_out_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "tenant": row["tenant"],
        "number": row["number"],
        "sender": row["sender"],
        "source": row["source"],
        "event_id": row["event_id"],
        "created_at": row["created_at"].isoformat(),
    }


async def list_all(request: web.Request) -> web.Response:
    return web.json_response(await optout_page(request))


async def optout_page(request: web.Request) -> dict[str, Any]:
    """A page of the asker's list as the request's parameters ask (the API's and the
    console's)."""
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    limit = params.limit(request)
    number = params.number(request, "number")
    cursor = params.parse_keyset_cursor(request, params.SERIAL_KEY)
    after = (cursor[0], int(cursor[1])) if cursor is not None else None
    async with context.read_db.connection() as connection:
        rows = await optouts.list_opt_outs(
            connection, asker, number=number, after=after, limit=limit + 1
        )
    page = rows[:limit]
    next_cursor = (
        params.keyset_cursor(page[-1]["created_at"], str(page[-1]["id"]))
        if len(rows) > limit and page
        else None
    )
    return {"data": [opt_out_json(row) for row in page], "next_cursor": next_cursor}


async def create(request: web.Request) -> web.Response:
    """Adds a handset to the list (source `api`): for the asker's tenant (the operator names
    one, default `default`)."""
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    incoming = await read_model(request, OptOutIn)
    if asker.tenant is not None:
        if incoming.tenant not in (None, asker.tenant):
            raise Forbidden("a tenant's key manages its own list only")
        tenant = asker.tenant
    else:
        tenant = incoming.tenant or DEFAULT_TENANT
    number, sender = incoming.number, incoming.sender
    async with context.db.connection() as connection:
        if asker.is_operator and await tenants.tenant(connection, tenant) is None:
            raise NotFound(
                f"no tenant named {tenant!r}",
                details=[{"field": "tenant", "error": "unknown tenant"}],
            )
        row = await optouts.add_opt_out(connection, tenant, number, sender, "api")
    return web.json_response(opt_out_json(row), status=201)


async def delete(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise NotFound("no such opt-out")
    async with context.db.connection() as connection:
        removed = await optouts.remove_opt_out(connection, int(raw), asker)
    if not removed:
        raise NotFound("no such opt-out")
    return web.Response(status=204)
