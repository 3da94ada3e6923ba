"""GET /openapi.json (OpenAPI 3.1, generated from the route table: each route's models of its
body and answers, its parameters and its scope) and GET /docs (the same, rendered as a page,
with no script to fetch)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from receiver.http import schemas
from receiver.http.fields import E164_SCHEMA, KNOWN, TEXT_PATTERN
from receiver.http.routing import Route
from receiver.http.session import PAGE_HEADERS

ERRORS: dict[str, str] = {
    "400": "Bad request",
    "401": "Missing or wrong API key",
    "403": "The API key lacks the scope, is a tenant's on an operator's endpoint"
    " (operator_only), or its tenant is disabled (tenant_disabled)",
    "404": "Not found",
    "408": "The request body did not arrive in time (BODY_TIMEOUT_S)",
    "409": "Conflict",
    "413": "Body too large",
    "422": "Invalid body",
    "429": "Too many requests (of this API key; on a callback URL, too many refused callbacks"
    " from this address: REFUSAL_RATE_PER_S): retry after Retry-After seconds",
    "503": "The database is unavailable: retry later",
}


def _models(routes: tuple[Route, ...]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [schemas.ErrorBody]
    for operation in routes:
        if operation.body is not None:
            found.append(operation.body)
        for model in operation.answers.values():
            for candidate in getattr(model, "__args__", (model,)):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    found.append(candidate)
    return list(dict.fromkeys(found))


def _ref(model: Any) -> dict[str, Any]:
    options = getattr(model, "__args__", None)
    if options:
        return {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in options]}
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def known_values(
    providers: Iterable[str], destinations: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """The components of the values the server knows only when it runs: its providers' names
    (the registry's) and its brokers' (the settings', by kind)."""

    def one_of(values: Iterable[str], what: str) -> dict[str, Any]:
        known = sorted(values)
        if not known:  # an enum of none is not valid OpenAPI: a string no value matches
            return {"type": "string", "not": {}, "description": f"{what}: none is configured"}
        return {"type": "string", "enum": known, "description": what}

    def brokers(kind: str) -> list[str]:
        return [name for name, of in destinations.items() if of == kind]

    return {
        "E164": E164_SCHEMA,
        "ProviderName": one_of(providers, "A provider of this hub"),
        "JetStreamName": one_of(
            brokers("jetstream"), "A NATS JetStream this hub's settings name (DESTINATIONS__*)"
        ),
        "RabbitMQName": one_of(
            brokers("rabbitmq"), "A RabbitMQ this hub's settings name (DESTINATIONS__*)"
        ),
    }


def _without_nul(schema: Any) -> Any:
    """Every free string of a request body without NUL: Postgres holds none (the server refuses
    one with a 4xx wherever it is), and the document says so where no rule says more."""
    if isinstance(schema, dict):
        found = {key: _without_nul(value) for key, value in schema.items()}
        free = not {"pattern", "enum", "const", "format", "$ref", KNOWN} & found.keys()
        if found.get("type") == "string" and free:
            found["pattern"] = TEXT_PATTERN
        return found
    if isinstance(schema, list):
        return [_without_nul(item) for item in schema]
    return schema


def _bodies_without_nul(components: dict[str, Any], bodies: set[type[BaseModel]]) -> dict[str, Any]:
    """The NUL rule on the components a request body reaches (an answer may carry one: a raw
    callback's body as it came)."""
    reached: set[str] = set()
    waiting = [f"{model.__name__}{mode}" for model in bodies for mode in ("", "-Input")]
    while waiting:
        name = waiting.pop()
        if name in reached or name not in components:
            continue
        reached.add(name)
        waiting += re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(components[name]))
    return {
        name: _without_nul(schema) if name in reached else schema
        for name, schema in components.items()
    }


def _linked(schema: Any) -> Any:
    """The schema with each mark of a known value (fields.known) made a reference."""
    if isinstance(schema, dict):
        if KNOWN in schema:
            return {"$ref": f"#/components/schemas/{schema[KNOWN]}"}
        return {key: _linked(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_linked(item) for item in schema]
    return schema


def document(
    routes: tuple[Route, ...], known: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    models = _models(routes)
    bodies = {route.body for route in routes if route.body is not None}
    _, definitions = models_json_schema(
        [(model, "validation" if model in bodies else "serialization") for model in models],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for operation in routes:
        responses: dict[str, Any] = {}
        for status, model in operation.answers.items():
            answer: dict[str, Any] = {"description": "OK" if status < "300" else "See body"}
            if model is not None:
                answer["content"] = {"application/json": {"schema": _ref(model)}}
            elif operation.content_type != "application/json":
                answer["content"] = {operation.content_type: {"schema": {"type": "string"}}}
            responses[status] = answer
        # A value the database cannot hold (a NUL character, say) is a 400 on any route of the
        # API; a body over the limit is a 413 wherever one is read.
        errors = operation.errors
        if operation.scope is not None:
            errors = (*errors, "400")
        if operation.body is not None:
            errors = (*errors, "400", "413")
        for status in errors:
            responses.setdefault(
                status,
                {
                    "description": ERRORS[status],
                    "content": {"application/json": {"schema": _ref(schemas.ErrorBody)}},
                },
            )
        spec: dict[str, Any] = {
            "summary": operation.summary,
            "operationId": f"{operation.method}_{operation.path}".replace("/", "_")
            .replace("{", "")
            .replace("}", "")
            .replace("-", "_"),
            "responses": responses,
            "parameters": [
                {"name": p.name, "in": p.where, "required": p.required, "schema": p.schema}
                for p in operation.params
            ],
        }
        if operation.scope is not None:
            spec["security"] = [{"apiKey": []}]
            spec["description"] = f"Needs an API key with the `{operation.scope}` scope."
        if operation.rules is not None:
            spec["description"] = f"{spec.get('description', '')} {operation.rules}".strip()
        if operation.body is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(operation.body)}},
            }
        elif operation.any_body:
            spec["requestBody"] = {
                "content": {
                    "application/json": {},
                    "application/x-www-form-urlencoded": {},
                    "text/plain": {},
                }
            }
        paths.setdefault(operation.path, {})[operation.method] = spec
    return {
        "openapi": "3.1.0",
        "info": {"title": "sms-receiver", "version": "1", "description": "SMS delivery-report hub"},
        "paths": paths,
        "components": {
            "schemas": _linked(_bodies_without_nul(definitions.get("$defs", {}), bodies))
            | dict(known or known_values((), {})),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


# The document of the app's route table, made once when the app is made.
OPENAPI = web.AppKey("openapi", dict[str, Any])


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


async def docs(request: web.Request) -> web.Response:
    """Swagger UI over /openapi.json, from the files of the `swagger-ui-bundle` package served by
    the hub itself (/docs/assets): it works offline, and "Try it out" calls this hub (with keys
    on: Authorize with the key, or the console's session for reads)."""
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>sms-receiver API</title>"
        "<link rel='stylesheet' href='/docs/assets/swagger-ui.css'></head><body>"
        "<div id='swagger-ui'></div>"
        "<script src='/docs/assets/swagger-ui-bundle.js'></script>"
        "<script src='/console/static/docs.js'></script></body></html>"
    )
    return web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)
