"""A route as the hub declares it: its handler, its documentation and the scope an API key
needs for it, in one record. The route table (in `receiver.app`) feeds both the router and the
OpenAPI document, so that no route of the hub's API exists without its documentation and its
scope (the simulated providers' sub-app and the bench's reference routes are not the API)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from receiver.storage.apikeys import SCOPES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str  # lower case, as OpenAPI writes it
    path: str
    handler: Handler
    summary: str
    answers: Mapping[str, Any]  # status -> the answer's model (or a union of them), None: none
    scope: str | None = None  # the scope an API key needs; None: open (callbacks, health, docs)
    # Only operator keys (of no tenant) reach it: tenants, refusals, what matches no message.
    operator: bool = False
    body: type[BaseModel] | None = None
    any_body: bool = False  # a provider's callback: whatever it sends
    params: tuple[Param, ...] = ()
    errors: tuple[str, ...] = ("400", "503")
    expect_handler: ExpectHandler | None = None
    content_type: str = "application/json"  # of the 200 answer when it has no model
    # Rules JSON Schema cannot state (bound to the clock, or one field's values to another's):
    # in the operation's description.
    rules: str | None = None


@dataclass(frozen=True, slots=True)
class Access:
    """What a route's caller needs: a key with `scope` (None: open), of the operator when
    `operator`."""

    scope: str | None
    operator: bool = False


OPEN = Access(None)

# (method, path pattern) -> what its caller's key needs.
ROUTE_ACCESS = web.AppKey("route_access", dict[tuple[str, str], Access])


def add_routes(app: web.Application, routes: tuple[Route, ...]) -> None:
    """Every route of the table on the router, and its scope where the key check finds it."""
    access: dict[tuple[str, str], Access] = {}
    for route in routes:
        if route.scope is None and route.path.startswith("/v1/"):
            raise ValueError(f"{route.method.upper()} {route.path} declares no scope")
        if route.scope is not None and route.scope not in SCOPES:
            raise ValueError(f"{route.method.upper()} {route.path}: unknown scope {route.scope}")
        if route.operator and route.scope is None:
            raise ValueError(f"{route.method.upper()} {route.path}: operator-only needs a scope")
        method = route.method.upper()
        if method == "GET" and route.expect_handler is None:
            app.router.add_get(route.path, route.handler)  # and HEAD
        else:
            app.router.add_route(
                method, route.path, route.handler, expect_handler=route.expect_handler
            )
        access[(method, route.path)] = Access(route.scope, route.operator)
    app[ROUTE_ACCESS] = access


def access_of(request: web.Request) -> Access | None:
    """What the route a request matched needs; None for a route that is not in the table (the
    sandbox's, say)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return None
    method = "GET" if route.method == "HEAD" else route.method
    return request.app.get(ROUTE_ACCESS, {}).get((method, resource.canonical))
