"""/v1/subscriptions and /v1/deliveries: who receives the re-emitted events, and what to
deliver again. A tenant's key reaches its tenant's subscriptions (which receive that tenant's
events) and their deliveries; an operator's, the operator's (which receive every event) and
every tenant's."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from typing import Annotated, Any, Literal

import asyncpg
from aiohttp import web
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from normalizers.events import EventType, Status
from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import asker_of
from receiver.http.bodies import read_model
from receiver.http.errors import NotFound, Unprocessable
from receiver.http.fields import Moment, ProviderName, known, no_nul
from receiver.storage import outbox

SECRET_OVERLAP_S = 24 * 3600  # the old secret still signs for a day after a rotation


# The length first, then the text: an error names the first rule broken.
def _short_string(value: str) -> str:
    """AMQP's short string: at most 255 bytes (a routing key)."""
    if len(value.encode()) > 255:
        raise ValueError("at most 255 bytes")
    return value


Description = Annotated[str, StringConstraints(max_length=500), AfterValidator(no_nul)]


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_types: list[EventType] | None = None
    providers: list[ProviderName] | None = None
    statuses: list[Status] | None = None


# A NATS subject to publish to: dot-separated tokens, none empty, no wildcard, no white space.
NATS_SUBJECT = r"^[^\x00-\x20\x7f.*>]+(\.[^\x00-\x20\x7f.*>]+)*$"
# RabbitMQ's rule for exchange names ('' is the default exchange, routing by queue name).
EXCHANGE_NAME = r"^[A-Za-z0-9_.:-]*$"


# http or https only (AnyHttpUrl), as the document says.
def _url_length(value: Any) -> Any:
    if isinstance(value, str) and len(value) > 2083:
        raise ValueError("must be 2083 characters at most")
    return value


WebhookUrl = Annotated[
    AnyHttpUrl,
    BeforeValidator(_url_length),
    WithJsonSchema(
        {
            "type": "string",
            "format": "uri",
            "minLength": 1,
            "maxLength": 2083,
            "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://",
        }
    ),
]
DestinationName = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9_-]*$")
]


class JetStreamDestination(BaseModel):
    """A subject on the NATS JetStream the settings name (`DESTINATIONS__<NAME>__URL`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["jetstream"]
    name: Annotated[DestinationName, known("JetStreamName")]
    subject: Annotated[str, StringConstraints(max_length=255, pattern=NATS_SUBJECT)]


class RabbitMQDestination(BaseModel):
    """An exchange and routing key on the RabbitMQ the settings name."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rabbitmq"]
    name: Annotated[DestinationName, known("RabbitMQName")]
    exchange: Annotated[str, StringConstraints(max_length=255, pattern=EXCHANGE_NAME)]
    routing_key: Annotated[str, AfterValidator(no_nul), AfterValidator(_short_string)]


Destination = Annotated[JetStreamDestination | RabbitMQDestination, Field(discriminator="kind")]


class SubscriptionIn(BaseModel):
    """A webhook (`url`) or a broker's `destination`: one of them."""

    model_config = ConfigDict(
        extra="forbid",
        # ONE_DESTINATION in words (a oneOf on an object makes client generators fail)
        json_schema_extra={"description": "Exactly one of url (a webhook) and destination."},
    )

    url: WebhookUrl | None = None
    destination: Destination | None = None
    filters: Filters = Field(default_factory=Filters)
    description: Description | None = None
    enabled: bool = True

    @model_validator(mode="after")
    def one_destination(self) -> SubscriptionIn:  # ONE_DESTINATION
        if (self.url is None) == (self.destination is None):
            raise ValueError("give either url (a webhook) or destination (a broker)")
        return self


class SubscriptionPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"description": "Not both url and destination."}
    )

    url: WebhookUrl | None = None
    destination: Destination | None = None
    filters: Filters | None = None
    description: Description | None = None
    enabled: bool | None = None


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Moment = Field(description="Events stored since then; a future time queues none")
    event_types: list[EventType] | None = None
    providers: list[ProviderName] | None = None
    statuses: list[Status] | None = None


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
        "destination": _json(row["destination"]),
        "filters": _json(row["filters"]),
        "description": row["description"],
        "enabled": row["enabled"],
        "disabled_reason": row["disabled_reason"],
        "failing_since": row["failing_since"].isoformat() if row["failing_since"] else None,
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "tenant": row["tenant"],
    }


def _known_destination(
    context: AppContext, destination: JetStreamDestination | RabbitMQDestination | None
) -> dict[str, Any] | None:
    """The destination as stored, once its name is a broker of that kind in the settings (a
    422 naming the field otherwise); its URL and credentials stay there."""
    if destination is None:
        return None
    broker = context.settings.destinations.get(destination.name)
    if broker is None:
        known = ", ".join(sorted(context.settings.destinations)) or "none is set"
        raise Unprocessable(
            "no such destination",
            details=[
                {
                    "field": "destination.name",
                    "error": f"not a DESTINATIONS__<NAME>__URL setting (known: {known})",
                }
            ],
        )
    if broker.kind != destination.kind:
        raise Unprocessable(
            "the destination is another kind of broker",
            details=[
                {
                    "field": "destination.kind",
                    "error": f"{destination.name!r} is a {broker.kind} broker",
                }
            ],
        )
    return destination.model_dump()


def _known_providers(context: AppContext, providers: list[str] | None, field: str) -> None:
    unknown = sorted(set(providers or ()) - set(context.registry))
    if unknown:
        raise Unprocessable(
            f"unknown provider {unknown[0][:60]!r}",
            details=[{"field": field, "error": "one of " + ", ".join(sorted(context.registry))}],
        )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _id(request: web.Request) -> uuid.UUID:
    subscription_id = params.uuid_or_none(request.match_info["id"])
    if subscription_id is None:
        raise NotFound("no such subscription")
    return subscription_id


async def create(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming = await read_model(request, SubscriptionIn)
    _known_providers(context, incoming.filters.providers, "filters.providers")
    destination = _known_destination(context, incoming.destination)
    secret = new_secret()
    async with context.db.connection() as connection:
        row = await outbox.create_subscription(
            connection,
            uuid.uuid4(),
            str(incoming.url) if incoming.url is not None else None,
            secret,
            _filters(incoming.filters),
            incoming.description,
            incoming.enabled,
            asker_of(request),
            destination,
        )
    # The secret is shown once, here; it is never returned again.
    return web.json_response(subscription_json(row) | {"secret": secret}, status=201)


async def list_all(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.db.connection() as connection:
        rows = await outbox.list_subscriptions(connection, asker_of(request))
    return web.json_response({"data": [subscription_json(row) for row in rows]})


async def get_one(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.db.connection() as connection:
        row = await outbox.get_subscription(connection, _id(request), asker_of(request))
    if row is None:
        raise NotFound("no such subscription")
    return web.json_response(subscription_json(row))


async def patch(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming = await read_model(request, SubscriptionPatch)
    if incoming.filters is not None:
        _known_providers(context, incoming.filters.providers, "filters.providers")
    changes: dict[str, Any] = {}
    fields = incoming.model_fields_set
    if incoming.url is not None and incoming.destination is not None:
        raise Unprocessable(
            "give either url or destination",
            details=[{"field": "destination", "error": "not with url"}],
        )
    if "url" in fields and incoming.url is not None:
        changes["url"] = str(incoming.url)
    if "destination" in fields and incoming.destination is not None:
        changes["destination"] = _known_destination(context, incoming.destination)
    if "filters" in fields and incoming.filters is not None:
        changes["filters"] = _filters(incoming.filters)
    if "description" in fields:
        changes["description"] = incoming.description
    if "enabled" in fields and incoming.enabled is not None:
        changes["enabled"] = incoming.enabled
    async with context.db.connection() as connection:
        row = await outbox.update_subscription(connection, _id(request), changes, asker_of(request))
    if row is None:
        raise NotFound("no such subscription")
    return web.json_response(subscription_json(row))


async def delete(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    async with context.db.connection() as connection:
        deleted = await outbox.delete_subscription(connection, _id(request), asker_of(request))
    if not deleted:
        raise NotFound("no such subscription")
    return web.Response(status=204)


async def rotate(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    secret = new_secret()
    async with context.db.connection() as connection:
        rotated = await outbox.rotate_secret(
            connection, _id(request), secret, SECRET_OVERLAP_S, asker_of(request)
        )
    if not rotated:
        raise NotFound("no such subscription")
    return web.json_response({"secret": secret, "previous_secret_valid_for_s": SECRET_OVERLAP_S})


async def replay(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming = await read_model(request, ReplayIn)
    _known_providers(context, incoming.providers, "providers")
    subscription_id = _id(request)
    async with context.db.connection() as connection:
        if await outbox.get_subscription(connection, subscription_id, asker_of(request)) is None:
            raise NotFound("no such subscription")
        queued = await outbox.replay(
            connection, subscription_id, incoming.since, _filters(incoming)
        )
    context.signal.fire()
    return web.json_response({"queued": queued}, status=202)


async def retry(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    raw_id = request.match_info["id"]
    if not (raw_id.isascii() and raw_id.isdigit() and int(raw_id) <= 2**63 - 1):
        raise NotFound("no such delivery")
    delivery_id = int(raw_id)
    async with context.db.connection() as connection:
        queued = await outbox.retry_delivery(connection, delivery_id, asker_of(request))
    if not queued:
        raise NotFound("no such delivery, or it is being delivered right now")
    context.signal.fire()
    return web.json_response({"queued": True}, status=202)
