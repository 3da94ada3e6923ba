"""Query parameters of the /v1 list endpoints, read the same way everywhere: a bad value is a
400 with a JSON error, never a 500."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Collection
from datetime import datetime

from aiohttp import web

from normalizers.base import parse_timestamp, to_e164
from receiver.http.errors import BadRequest
from receiver.http.fields import has_nul, in_years

# The largest page of every list endpoint, the event feed's included.
MAX_LIMIT = 500


def limit(request: web.Request, default: int = 50) -> int:
    try:
        return min(max(int(request.query.get("limit", str(default))), 1), MAX_LIMIT)
    except ValueError:
        raise BadRequest("limit must be a number") from None


def text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and (has_nul(value) or len(value) > 255):
        raise BadRequest(f"{name} is not a valid value")
    return value


def choice(request: web.Request, name: str, known: Collection[str]) -> str | None:
    """A filter that takes one of `known` values; any other is a 400 listing them (a typo must
    not look like "nothing matches")."""
    value = text(request, name)
    if value is not None and value not in known:
        raise BadRequest(f"unknown {name} {value[:60]!r}", details={"known": sorted(known)})
    return value


def number(request: web.Request, name: str) -> str | None:
    """A phone number filter as E.164; a value that is none (even blank) is a 400."""
    value = text(request, name)
    if value is None:
        return None
    e164 = to_e164(value)
    if e164 is None:
        raise BadRequest(f"{name} is not a phone number")
    return e164


def seconds(request: web.Request, name: str, default: float, *, high: float) -> float:
    """A duration in seconds, 0 to `high`; anything else is a 400."""
    value = request.query.get(name)
    if value is None:
        return default
    try:
        parsed = float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds") from None
    if not 0 <= parsed <= high:  # NaN fails this too
        raise BadRequest(f"{name} must be between 0 and {high:g} seconds")
    return parsed


def moment(request: web.Request, name: str, default: datetime | None = None) -> datetime | None:
    value = request.query.get(name)
    if value is None:
        return default
    parsed = parse_timestamp(value)
    if parsed is None or not in_years(parsed):
        raise BadRequest(f"{name} must be an ISO 8601 time")
    return parsed


def keyset_cursor(at: datetime, key: str) -> str:
    """An opaque keyset cursor: the last row's time and its id."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode().rstrip("=")


def parse_keyset_cursor(request: web.Request) -> tuple[datetime, str] | None:
    value = request.query.get("cursor")
    if not value:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        stamp, _, key = raw.partition("|")
        return datetime.fromisoformat(stamp), key
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("not a cursor") from None


def uuid_or_none(text: str) -> uuid.UUID | None:
    """An id from a path or a cursor: None when it is not one (a 404 or a 400 to the caller)."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None
