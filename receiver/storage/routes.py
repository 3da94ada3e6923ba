"""Send routes (migration 0023): which providers the hub sends through when a message names none,
in which order and by which rule, and every change of them (who, when, before and after). One
model (`RouteSpec`) for the API's bodies, the CLI's TOML files and the stored rows."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
import phonenumbers
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic.config import JsonDict

from receiver.http.fields import KNOWN, ProviderName
from receiver.storage.pool import Connection

ROUTE_NAME_RULE = "1 to 63 lower-case letters, digits, '-' or '_', starting with a letter or digit"
ROUTE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"

# ISO 3166 alpha-2 codes, upper case: the countries libphonenumber knows.
COUNTRIES = sorted(phonenumbers.SUPPORTED_REGIONS)
COUNTRY_SCHEMA: JsonDict = {"type": "string", "enum": list(COUNTRIES)}
Country = Annotated[
    str, StringConstraints(min_length=2, max_length=2), WithJsonSchema(COUNTRY_SCHEMA)
]
# A price's country: a code, or "*" for any other.
PRICE_COUNTRIES: JsonDict = {"type": "string", "enum": [*COUNTRIES, "*"]}
# What the document says of "`cheapest` needs prices" (RouteSpec.problems).
CHEAPEST_NEEDS_PRICES: JsonDict = {
    "if": {"properties": {"choose": {"const": "cheapest"}}, "required": ["choose"]},
    "then": {"properties": {"prices": {"type": "object"}}, "required": ["prices"]},
}
# The digits an E.164 number starts with, `+` first: `+44`, `+4477`.
Prefix = Annotated[str, StringConstraints(pattern=r"^\+[0-9]{1,14}$")]
# Decimal text or a number: what one message to that country costs through that provider.
Price = Annotated[float, Field(ge=0, le=1_000_000)]
Choose = Literal["priority", "weighted", "cheapest"]
Kind = Literal["sms", "mms"]
# Statuses a recipient may end in for redelivery to try the next provider.
RedeliverOn = Literal["undelivered", "expired", "failed"]


class RouteMatch(BaseModel):
    """What a message's recipient must be for the route to take it; a field left out takes any.
    Within a field any value matches; every field given must match."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tenant: list[Annotated[str, StringConstraints(max_length=63)]] | None = Field(
        default=None, min_length=1, max_length=100
    )
    country: list[Country] | None = Field(default=None, min_length=1, max_length=300)
    prefix: list[Prefix] | None = Field(default=None, min_length=1, max_length=100)
    sender: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] | None = Field(
        default=None, min_length=1, max_length=100
    )
    kind: list[Kind] | None = Field(default=None, min_length=1, max_length=2)

    @field_validator("country")
    @classmethod
    def known_countries(cls, codes: list[str] | None) -> list[str] | None:
        if codes is None:
            return None
        unknown = [code for code in codes if code not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(
                f"unknown country code {unknown[0]!r} (ISO 3166 alpha-2, upper case, as GB)"
            )
        return codes


class Redeliver(BaseModel):
    """Failover after the fact: a recipient that ends in one of `on` (a temporary failure, or the
    hub's own expiry) within `within_s` of its attempt is sent again over the route's next
    provider, up to `max_attempts` attempts in all."""

    model_config = ConfigDict(extra="forbid", strict=True)

    on: list[RedeliverOn] = Field(default=["undelivered", "expired"], min_length=1, max_length=3)
    within_s: int = Field(default=600, ge=1, le=7 * 86400)
    max_attempts: int = Field(default=2, ge=2, le=5)


class RouteSpec(BaseModel):
    """A route as stored (the API's body adds its name and position)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=CHEAPEST_NEEDS_PRICES)

    match: RouteMatch = Field(default_factory=RouteMatch)
    providers: list[ProviderName] = Field(min_length=1, max_length=10)
    choose: Choose = "priority"
    # Shares of the first choice under `weighted` (70/30: {"swift": 70, "carrierx": 30});
    # a provider left out gets 1.
    weights: (
        Annotated[
            dict[ProviderName, Annotated[int, Field(gt=0, le=1_000_000)]],
            WithJsonSchema(
                {
                    "type": "object",
                    "propertyNames": {KNOWN: "ProviderName"},
                    "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                }
            ),
        ]
        | None
    ) = None
    # Prices under `cheapest`: per provider, per country code or "*" for any other.
    prices: (
        Annotated[
            dict[
                ProviderName,
                Annotated[
                    dict[str, Price],
                    WithJsonSchema(
                        {
                            "type": "object",
                            "propertyNames": PRICE_COUNTRIES,
                            "additionalProperties": {
                                "type": "number",
                                "minimum": 0,
                                "maximum": 1e6,
                            },
                        }
                    ),
                ],
            ],
            WithJsonSchema(
                {
                    "type": "object",
                    "propertyNames": {KNOWN: "ProviderName"},
                    "additionalProperties": {
                        "type": "object",
                        "propertyNames": PRICE_COUNTRIES,
                        "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1e6},
                    },
                }
            ),
        ]
        | None
    ) = None
    failover_on_timeout: bool = False
    redeliver: Redeliver | None = None
    enabled: bool = True

    @field_validator("providers")
    @classmethod
    def each_once(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("a provider is named twice")
        return names

    def problems(self, known_providers: Collection[str]) -> list[dict[str, str]]:
        """What the model alone cannot check: providers the hub does not have, weights and
        prices of providers the route does not name, price countries that do not exist."""
        found = []
        known = ", ".join(sorted(known_providers))
        for index, name in enumerate(self.providers):
            if name not in known_providers:
                found.append(
                    {"field": f"providers.{index}", "error": f"unknown provider (known: {known})"}
                )
        for field, named in (("weights", self.weights), ("prices", self.prices)):
            for name in named or {}:
                if name not in self.providers:
                    found.append(
                        {"field": f"{field}.{name}", "error": "not one of the route's providers"}
                    )
        for name, by_country in (self.prices or {}).items():
            for code in by_country:
                if code != "*" and code not in phonenumbers.SUPPORTED_REGIONS:
                    found.append(
                        {"field": f"prices.{name}.{code}", "error": "unknown country code"}
                    )
        if self.choose == "cheapest" and not self.prices:
            found.append({"field": "prices", "error": "`cheapest` needs prices"})
        return found

    def weight(self, provider: str) -> int:
        return (self.weights or {}).get(provider, 1)

    def price(self, provider: str, country: str | None) -> float | None:
        by_country = (self.prices or {}).get(provider, {})
        return by_country.get(country or "", by_country.get("*"))


@dataclass(frozen=True, slots=True)
class SendRoute:
    name: str
    position: int
    spec: RouteSpec


class RouteError(Exception):
    """A route change that cannot be done: `code` says which rule (an HTTP answer's code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def route_of(row: asyncpg.Record) -> SendRoute:
    return SendRoute(
        row["name"], row["position"], RouteSpec.model_validate(json.loads(row["spec"]))
    )


async def list_routes(connection: Connection) -> list[asyncpg.Record]:
    """Every route in the order they are tried."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT name, position, spec, created_at, updated_at FROM send_routes"
        " ORDER BY position, name"
    )
    return rows


async def get_route(connection: Connection, name: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT name, position, spec, created_at, updated_at FROM send_routes WHERE name = $1",
        name,
    )
    return row


async def routes_version(connection: Connection) -> int:
    """Grows with every change: an instance reloads its routes when it moves."""
    version: int | None = await connection.fetchval("SELECT max(id) FROM send_route_changes")
    return version or 0


def _spec_json(spec: RouteSpec) -> str:
    return spec.model_dump_json(exclude_none=True)


async def _record(
    connection: Connection,
    name: str,
    action: str,
    who: str,
    before: asyncpg.Record | None,
    after: dict[str, Any] | None,
) -> None:
    await connection.execute(
        "INSERT INTO send_route_changes (route, action, who, before, after)"
        " VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)",
        name,
        action,
        who,
        json.dumps(_as_stored(before)) if before is not None else None,
        json.dumps(after) if after is not None else None,
    )


def _as_stored(row: asyncpg.Record) -> dict[str, Any]:
    return {"position": row["position"], **json.loads(row["spec"])}


async def put_route(
    connection: Connection,
    name: str,
    spec: RouteSpec,
    *,
    position: int | None,
    who: str,
    create_only: bool = False,
) -> str:
    """Creates the route, or replaces it (`create_only`: a route of that name is a
    `route_exists` error); returns the action done (`create`, `update`, or `unchanged`). A route
    given no position goes after every other (a replaced one keeps its place)."""
    async with connection.transaction():
        # One change at a time, so that positions and the history stay in step.
        await connection.execute("LOCK TABLE send_routes IN SHARE ROW EXCLUSIVE MODE")
        before = await connection.fetchrow(
            "SELECT name, position, spec FROM send_routes WHERE name = $1", name
        )
        if before is not None and create_only:
            raise RouteError("route_exists", f"a route named {name!r} exists already")
        if position is None:
            position = (
                before["position"]
                if before is not None
                else await connection.fetchval(
                    "SELECT coalesce(max(position), 0) + 10 FROM send_routes"
                )
            )
        stored = _spec_json(spec)
        if before is not None:
            if before["position"] == position and json.loads(before["spec"]) == json.loads(stored):
                return "unchanged"
            await connection.execute(
                "UPDATE send_routes SET position = $2, spec = $3::jsonb, updated_at = now()"
                " WHERE name = $1",
                name,
                position,
                stored,
            )
        else:
            await connection.execute(
                "INSERT INTO send_routes (name, position, spec) VALUES ($1, $2, $3::jsonb)",
                name,
                position,
                stored,
            )
        action = "update" if before is not None else "create"
        await _record(
            connection, name, action, who, before, {"position": position, **json.loads(stored)}
        )
    return action


async def delete_route(connection: Connection, name: str, *, who: str) -> bool:
    async with connection.transaction():
        before = await connection.fetchrow(
            "DELETE FROM send_routes WHERE name = $1 RETURNING name, position, spec", name
        )
        if before is None:
            return False
        await _record(connection, name, "delete", who, before, None)
    return True


async def replace_all(
    connection: Connection, routes: Sequence[tuple[str, RouteSpec]], *, who: str
) -> dict[str, list[str]]:
    """The routes become exactly these, in this order (`routes import`): in one transaction,
    each change recorded; returns the names created, updated, deleted and unchanged."""
    done: dict[str, list[str]] = {"create": [], "update": [], "delete": [], "unchanged": []}
    async with connection.transaction():
        await connection.execute("LOCK TABLE send_routes IN SHARE ROW EXCLUSIVE MODE")
        names = {name for name, _spec in routes}
        for row in await list_routes(connection):
            if row["name"] not in names:
                await delete_route(connection, row["name"], who=who)
                done["delete"].append(row["name"])
        for index, (name, spec) in enumerate(routes):
            action = await put_route(connection, name, spec, position=(index + 1) * 10, who=who)
            done[action].append(name)
    return done


async def route_changes(
    connection: Connection, name: str | None, limit: int
) -> list[asyncpg.Record]:
    """The latest changes first (of one route, when named)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT id, route, action, who, at, before, after FROM send_route_changes"
        " WHERE ($1::text IS NULL OR route = $1) ORDER BY id DESC LIMIT $2",
        name,
        limit,
    )
    return rows


async def route_split(connection: Connection, minutes: int) -> list[asyncpg.Record]:
    """Per route, the recipients of the last `minutes` by the provider that carries them now
    (their latest attempt's)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        SELECT d.value->>'route' AS route, r.provider, count(*) AS n
        FROM messages m
        CROSS JOIN LATERAL jsonb_array_elements(m.routing) AS d(value)
        JOIN message_recipients r ON r.message_id = m.id AND NOT r.superseded
             AND d.value->'to' ? r.recipient
        WHERE m.routing IS NOT NULL AND m.created_at >= now() - make_interval(mins => $1)
          AND d.value->>'route' IS NOT NULL
        GROUP BY 1, 2 ORDER BY 1, 3 DESC
        """,
        minutes,
    )
    return rows
