"""Query parameters of the /v1 endpoints, read the same way everywhere: each reader goes with
the schema the OpenAPI document gives its parameter (`*_SCHEMA`, used by the route table), and
takes exactly what that schema allows. A value it does not allow is a 400 naming the parameter,
never a 500 and never a value quietly changed into one it allows (a `limit` of 0 is refused,
not read as 1)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from receiver.http.errors import BadRequest
from receiver.http.fields import (
    E164_REF,
    E164_RULE,
    MOMENT_RULE,
    MOMENT_SCHEMA,
    TEXT_PATTERN,
    has_nul,
    is_e164,
    parse_moment,
)

# The largest page of every list endpoint, the event feed's included.
MAX_LIMIT = 500
MAX_TEXT = 255

INTEGER = re.compile(r"-?[0-9]{1,18}")
# A JSON number, as a query string writes it.
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def limit_schema(default: int = 50) -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": default}


TEXT_SCHEMA: dict[str, Any] = {"type": "string", "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN}
NUMBER_SCHEMA = E164_REF
TIME_SCHEMA = MOMENT_SCHEMA


def choice_schema(known: Collection[str]) -> dict[str, Any]:
    return {"type": "string", "enum": sorted(known)}


def limit(request: web.Request, default: int = 50) -> int:
    value = request.query.get("limit")
    if value is None:
        return default
    if INTEGER.fullmatch(value) is None or not 1 <= int(value) <= MAX_LIMIT:
        raise BadRequest(
            f"limit must be a whole number from 1 to {MAX_LIMIT}",
            details=[{"field": "limit", "error": f"from 1 to {MAX_LIMIT}"}],
        )
    return int(value)


def text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and (has_nul(value) or len(value) > MAX_TEXT):
        raise BadRequest(
            f"{name} is not a valid value",
            details=[{"field": name, "error": f"at most {MAX_TEXT} characters, no NUL"}],
        )
    return value


def choice(request: web.Request, name: str, known: Collection[str]) -> str | None:
    """A filter that takes one of `known` values; any other is a 400 listing them (a typo must
    not look like "nothing matches")."""
    value = request.query.get(name)
    if value is not None and value not in known:
        raise BadRequest(f"unknown {name} {value[:60]!r}", details={"known": sorted(known)})
    return value


def number(request: web.Request, name: str) -> str | None:
    """A phone number filter, in E.164 (NUMBER_SCHEMA); any other value is a 400."""
    value = request.query.get(name)
    if value is None:
        return None
    if not is_e164(value):
        # A + written as is in a query string arrives as a space.
        hint = " (write + as %2B in a query string)" if value.startswith(" ") else ""
        raise BadRequest(
            f"{name} is not a phone number{hint}", details=[{"field": name, "error": E164_RULE}]
        )
    return value


def seconds_schema(high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": high}


def seconds(request: web.Request, name: str, default: float, *, high: float) -> float:
    """A duration in seconds, 0 to `high` (seconds_schema); anything else is a 400."""
    value = request.query.get(name)
    if value is None:
        return default
    if NUMBER.fullmatch(value) is None or not 0 <= float(value) <= high:
        raise BadRequest(
            f"{name} must be a number of seconds from 0 to {high:g}",
            details=[{"field": name, "error": f"from 0 to {high:g}"}],
        )
    return float(value)


def moment(request: web.Request, name: str, default: datetime | None = None) -> datetime | None:
    """A time (TIME_SCHEMA); anything else is a 400."""
    value = request.query.get(name)
    if value is None:
        return default
    parsed = parse_moment(value)
    if parsed is None:
        raise BadRequest(
            f"{name} must be {MOMENT_RULE}", details=[{"field": name, "error": MOMENT_RULE}]
        )
    return parsed


# A keyset position: the row's time in microseconds since 1970, `~`, the row's id. Any such
# value is a position to page from (not only one the hub gave), so the schema says all of it.
UUID_KEY = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SERIAL_KEY = r"\d{1,18}"
TEXT_KEY = r"[A-Za-z0-9_.:-]{1,100}"  # an event's id
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cursor_schema(key: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": rf"^(\d{{1,17}}~{key})?$",
        "description": "next_cursor of the page before",
    }


def keyset_cursor(at: datetime, key: object) -> str:
    """The keyset cursor of a row: its time and its id."""
    micros = (at - EPOCH) // timedelta(microseconds=1)
    return f"{micros}~{key}"


def parse_keyset_cursor(request: web.Request, key: str = UUID_KEY) -> tuple[datetime, str] | None:
    value = request.query.get("cursor")
    if not value:  # none, or empty: the first page
        return None
    found = re.fullmatch(rf"(\d{{1,17}})~({key})", value, re.ASCII)
    if found is None:
        raise BadRequest(
            "not a cursor", details=[{"field": "cursor", "error": "next_cursor of a page"}]
        )
    return EPOCH + timedelta(microseconds=int(found[1])), found[2]


def uuid_or_none(text: str) -> uuid.UUID | None:
    """An id from a path: None when it is not one (a 404 to the caller)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
