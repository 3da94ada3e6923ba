"""GET /openapi.json (OpenAPI 3.1, generated from the pydantic models of each endpoint's body
and answers) and GET /docs (the same, rendered as a page, with no script to fetch)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from receiver import schemas
from receiver.sending import SendMessageIn
from receiver.subscriptions import ReplayIn, SubscriptionIn, SubscriptionPatch

ERRORS: dict[str, str] = {
    "400": "Bad request",
    "401": "Missing or wrong API key",
    "403": "The API key lacks the scope",
    "404": "Not found",
    "408": "The request body did not arrive in time (BODY_TIMEOUT_S)",
    "409": "Conflict",
    "413": "Body too large",
    "422": "Invalid body",
    "429": "Too many requests for this API key: retry after Retry-After seconds",
    "503": "The database is unavailable: retry later",
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    answers: dict[str, type[BaseModel] | None]
    scope: str | None = None
    body: type[BaseModel] | None = None
    any_body: bool = False  # a provider's callback: whatever it sends
    params: tuple[Param, ...] = ()
    errors: tuple[str, ...] = ("400", "503")


CURSOR = Param("cursor")
LIMIT = Param("limit", schema={"type": "integer", "minimum": 1})
PROVIDER_PATH = Param("provider", "path", required=True)
ID_PATH = Param("id", "path", required=True)

OPERATIONS: tuple[Operation, ...] = (
    Operation("get", "/healthz", "The process is up", {"200": schemas.Health}, errors=()),
    Operation(
        "get",
        "/readyz",
        "The database answers and is migrated",
        {"200": schemas.Ready, "503": schemas.Ready},
        errors=(),
    ),
    Operation(
        "post",
        "/callbacks/{provider}",
        "A provider's callback (any format it sends)",
        {"200": schemas.CallbackAnswer, "202": schemas.CallbackAnswer},
        any_body=True,
        params=(PROVIDER_PATH,),
        errors=("400", "401", "403", "404", "408", "413", "503"),
    ),
    Operation(
        "get",
        "/callbacks/{provider}",
        "A provider's callback by GET (query string)",
        {"200": schemas.CallbackAnswer, "202": schemas.CallbackAnswer},
        params=(PROVIDER_PATH,),
        errors=("400", "401", "403", "404", "503"),
    ),
    Operation(
        "post",
        "/v1/messages",
        "Send a message through a provider",
        {"201": schemas.SendAnswer, "502": schemas.ErrorBody},
        scope="send",
        body=SendMessageIn,
        params=(Param("Idempotency-Key", "header"),),
        errors=("400", "401", "403", "408", "409", "413", "422", "429", "503"),
    ),
    Operation(
        "get",
        "/v1/messages",
        "Messages, newest first",
        {"200": schemas.MessageList},
        scope="read",
        params=(
            Param("ref"),
            Param("provider"),
            Param("status"),
            Param("to"),
            Param("since", schema={"type": "string", "format": "date-time"}),
            Param("until", schema={"type": "string", "format": "date-time"}),
            LIMIT,
            CURSOR,
        ),
        errors=("400", "401", "403", "503"),
    ),
    Operation(
        "get",
        "/v1/messages/{id}",
        "One message, its recipients and event timeline",
        {"200": schemas.MessageView},
        scope="read",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Operation(
        "get",
        "/v1/messages/by-provider-id/{provider}/{provider_message_id}",
        "The message a provider's id belongs to (or its orphan reports)",
        {"200": schemas.MessageView | schemas.OrphanView},  # type: ignore[dict-item]
        scope="read",
        params=(PROVIDER_PATH, Param("provider_message_id", "path", required=True)),
        errors=("400", "401", "403", "404", "503"),
    ),
    Operation(
        "get",
        "/v1/inbound",
        "Inbound replies and the message each answers",
        {"200": schemas.InboundPage},
        scope="read",
        params=(
            Param("provider"),
            Param("from"),
            Param("to"),
            Param("since", schema={"type": "string", "format": "date-time"}),
            Param("until", schema={"type": "string", "format": "date-time"}),
            LIMIT,
            CURSOR,
        ),
        errors=("400", "401", "403", "503"),
    ),
    Operation(
        "get",
        "/v1/events",
        "Every event in commit-safe order (the pull feed)",
        {"200": schemas.EventPage},
        scope="read",
        params=(Param("after"), LIMIT, Param("type"), Param("provider")),
        errors=("400", "401", "403", "503"),
    ),
    Operation(
        "get",
        "/v1/events/stream",
        "The same events, live, as Server-Sent Events",
        {"200": None},
        scope="read",
        params=(Param("after"), Param("Last-Event-ID", "header"), Param("type"), Param("provider")),
        errors=("400", "401", "403", "503"),
    ),
    Operation(
        "post",
        "/v1/subscriptions",
        "Subscribe a URL (the secret is shown once)",
        {"201": schemas.SubscriptionCreated},
        scope="admin",
        body=SubscriptionIn,
        errors=("401", "403", "408", "422", "503"),
    ),
    Operation(
        "get",
        "/v1/subscriptions",
        "Every subscription",
        {"200": schemas.SubscriptionList},
        scope="admin",
        errors=("401", "403", "503"),
    ),
    Operation(
        "get",
        "/v1/subscriptions/{id}",
        "One subscription",
        {"200": schemas.SubscriptionView},
        scope="admin",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Operation(
        "patch",
        "/v1/subscriptions/{id}",
        "Change a subscription",
        {"200": schemas.SubscriptionView},
        scope="admin",
        body=SubscriptionPatch,
        params=(ID_PATH,),
        errors=("401", "403", "404", "408", "422", "503"),
    ),
    Operation(
        "delete",
        "/v1/subscriptions/{id}",
        "Delete a subscription",
        {"204": None},
        scope="admin",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Operation(
        "post",
        "/v1/subscriptions/{id}/rotate-secret",
        "A new secret; the old one signs too for 24 h",
        {"200": schemas.RotatedSecret},
        scope="admin",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Operation(
        "post",
        "/v1/subscriptions/{id}/replay",
        "Queue again the events since a time",
        {"202": schemas.Queued},
        scope="admin",
        body=ReplayIn,
        params=(ID_PATH,),
        errors=("401", "403", "404", "408", "422", "503"),
    ),
    Operation(
        "post",
        "/v1/deliveries/{id}/retry",
        "Try one delivery again now",
        {"202": schemas.Queued},
        scope="admin",
        params=(Param("id", "path", {"type": "integer"}, required=True),),
        errors=("401", "403", "404", "503"),
    ),
    Operation(
        "get",
        "/v1/raw-callbacks",
        "Raw callbacks, newest first",
        {"200": schemas.RawCallbackPage},
        scope="admin",
        params=(Param("outcome"), Param("provider"), LIMIT, CURSOR),
        errors=("400", "401", "403", "503"),
    ),
    Operation(
        "get",
        "/v1/raw-callbacks/{id}",
        "One raw callback, body shown, secrets redacted",
        {"200": schemas.RawCallbackDetail},
        scope="admin",
        params=(ID_PATH,),
        errors=("401", "403", "404", "503"),
    ),
    Operation(
        "get",
        "/v1/stats",
        "Per provider: messages, delivery rate, report times",
        {"200": schemas.Stats},
        scope="read",
        params=(Param("since", schema={"type": "string", "format": "date-time"}),),
        errors=("400", "401", "403", "503"),
    ),
)


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [schemas.ErrorBody]
    for operation in OPERATIONS:
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


@cache
def document() -> dict[str, Any]:
    models = _models()
    _, definitions = models_json_schema(
        [(model, "serialization" if model not in _bodies() else "validation") for model in models],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        responses: dict[str, Any] = {}
        for status, model in operation.answers.items():
            answer: dict[str, Any] = {"description": "OK" if status < "300" else "See body"}
            if model is not None:
                answer["content"] = {"application/json": {"schema": _ref(model)}}
            elif operation.path.endswith("/stream"):
                answer["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
            responses[status] = answer
        for status in operation.errors:
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
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


def _bodies() -> set[type[BaseModel]]:
    return {op.body for op in OPERATIONS if op.body is not None}


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document())


async def docs(request: web.Request) -> web.Response:
    rows = []
    for path, methods in document()["paths"].items():
        for method, spec in methods.items():
            params = ", ".join(f"{p['name']} ({p['in']})" for p in spec["parameters"]) or "-"
            answers = ", ".join(sorted(spec["responses"]))
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code>"
                f"</td><td>{html.escape(spec['summary'])}</td><td>{html.escape(params)}</td>"
                f"<td>{answers}</td><td>{html.escape(spec.get('description', ''))}</td></tr>"
            )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>sms-receiver API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;"
        "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}</style></head><body>"
        "<h1>sms-receiver API</h1><p>The machine-readable document: "
        "<a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p><table><tr><th>method</th>"
        "<th>path</th><th>what</th><th>parameters</th><th>answers</th><th>access</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
