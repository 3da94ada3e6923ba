"""/v1/routes (operator keys only): the routes that choose providers for messages that name
none, and the history of their changes."""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import who_of
from receiver.http.bodies import read_model
from receiver.http.errors import Conflict, NotFound, Unprocessable
from receiver.routing.choice import ROUTE_TABLE
from receiver.storage import routes
from receiver.storage.routes import ROUTE_NAME_PATTERN, ROUTE_NAME_RULE, RouteError, RouteSpec


class RouteBody(RouteSpec):
    """A route as PUT takes it: its place among the others (lower first; left out: last, or
    where it was)."""

    position: int | None = Field(default=None, ge=0, le=1_000_000_000)


class RouteIn(RouteBody):
    name: str = Field(pattern=ROUTE_NAME_PATTERN, description=ROUTE_NAME_RULE)


class RouteView(RouteSpec):
    name: str
    position: int
    created_at: datetime
    updated_at: datetime


class RouteList(BaseModel):
    data: list[RouteView]


class RouteChange(BaseModel):
    id: int
    route: str
    action: str
    who: str
    at: datetime
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class RouteChanges(BaseModel):
    data: list[RouteChange]


class RouteExists(Conflict):
    code = "route_exists"


def checked(spec: RouteSpec, known: Collection[str]) -> None:
    """A 422 naming each field the model alone cannot check."""
    problems = spec.problems(known)
    if problems:
        raise Unprocessable("the route is not valid", details=problems)


def route_json(row: asyncpg.Record) -> dict[str, Any]:
    spec = RouteSpec.model_validate(json.loads(row["spec"]))
    return {
        "name": row["name"],
        "position": row["position"],
        **spec.model_dump(mode="json"),
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


def change_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "route": row["route"],
        "action": row["action"],
        "who": row["who"],
        "at": row["at"].isoformat(),
        "before": json.loads(row["before"]) if row["before"] else None,
        "after": json.loads(row["after"]) if row["after"] else None,
    }


async def list_all(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.db.connection() as connection:
        rows = await routes.list_routes(connection)
    return web.json_response({"data": [route_json(row) for row in rows]})


async def create(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming = await read_model(request, RouteIn)
    spec = RouteSpec.model_validate(incoming.model_dump(exclude={"name", "position"}))
    checked(spec, context.registry.keys())
    try:
        async with context.db.connection() as connection:
            await routes.put_route(
                connection,
                incoming.name,
                spec,
                position=incoming.position,
                who=who_of(request),
                create_only=True,
            )
            row = await routes.get_route(connection, incoming.name)
    except RouteError as error:
        raise RouteExists(error.message) from None
    assert row is not None
    request.app[ROUTE_TABLE].changed()
    return web.json_response(route_json(row), status=201)


async def get_one(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    name = request.match_info["name"]
    async with context.db.connection() as connection:
        row = await routes.get_route(connection, name)
    if row is None:
        raise NotFound(f"no route named {name[:80]!r}")
    return web.json_response(route_json(row))


async def put(request: web.Request) -> web.Response:
    """Creates or replaces the route of that name."""
    context = request.app[AppContext.KEY]
    name = request.match_info["name"]
    incoming = await read_model(request, RouteBody)
    if not re.fullmatch(ROUTE_NAME_PATTERN, name):
        raise Unprocessable(
            "not a route name", details=[{"field": "name", "error": ROUTE_NAME_RULE}]
        )
    spec = RouteSpec.model_validate(incoming.model_dump(exclude={"position"}))
    checked(spec, context.registry.keys())
    async with context.db.connection() as connection:
        action = await routes.put_route(
            connection, name, spec, position=incoming.position, who=who_of(request)
        )
        row = await routes.get_route(connection, name)
    assert row is not None
    request.app[ROUTE_TABLE].changed()
    return web.json_response(route_json(row), status=201 if action == "create" else 200)


async def delete(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    name = request.match_info["name"]
    async with context.db.connection() as connection:
        deleted = await routes.delete_route(connection, name, who=who_of(request))
    if not deleted:
        raise NotFound(f"no route named {name[:80]!r}")
    request.app[ROUTE_TABLE].changed()
    return web.Response(status=204)


async def changes(request: web.Request) -> web.Response:
    """The latest changes first, of every route or of the one named by `route`."""
    context = request.app[AppContext.KEY]
    limit = params.limit(request)
    name = params.text(request, "route")
    async with context.db.connection() as connection:
        rows = await routes.route_changes(connection, name, limit)
    return web.json_response({"data": [change_json(row) for row in rows]})
