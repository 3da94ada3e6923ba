"""API keys: `Authorization: Bearer smsr_...` on the /v1 API, each with scopes (send, read,
admin). Providers' callback URLs, health checks and the docs are not behind keys."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import structlog
from aiohttp import web

from receiver.context import AppContext
from receiver.errors import AuthError, Forbidden
from receiver.queries import Connection

log = structlog.get_logger("receiver.apikeys")

SCOPES = ("send", "read", "admin")
KEY_PREFIX = "smsr_"
SCOPE_KEY = "required_scope"  # set on a route's handler by `requires`


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    name: str
    scopes: tuple[str, ...]


# The request's key, for handlers that outlive the request's start (event streams).
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("api_key", ApiKey)


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(connection: Connection, name: str, scopes: list[str]) -> tuple[uuid.UUID, str]:
    """A new key; its secret is returned once and only its hash is stored."""
    secret = new_secret()
    key_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes) VALUES ($1, $2, $3, $4, $5)",
        key_id,
        name,
        secret[: len(KEY_PREFIX) + 6],
        digest(secret),
        sorted(set(scopes)),
    )
    return key_id, secret


async def list_keys(connection: Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT id, name, prefix, scopes, created_at, revoked_at, last_used_at FROM api_keys"
        " ORDER BY created_at"
    )
    return rows


async def revoke_key(connection: Connection, key_id: uuid.UUID) -> bool:
    result: str = await connection.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return result.endswith(" 1")


async def find_key(connection: Connection, secret: str) -> ApiKey | None:
    row = await connection.fetchrow(
        "SELECT id, name, scopes, last_used_at < now() - interval '1 minute' AS stale"
        " FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL",
        digest(secret),
    )
    if row is None:
        return None
    if row["stale"] is not False:  # a write a minute at most, not one per request
        with contextlib.suppress(Exception):
            await connection.execute(
                "UPDATE api_keys SET last_used_at = now() WHERE id = $1", row["id"]
            )
    return ApiKey(row["id"], row["name"], tuple(row["scopes"]))


async def still_valid(connection: Connection, key_id: uuid.UUID) -> bool:
    valid = await connection.fetchval(
        "SELECT revoked_at IS NULL FROM api_keys WHERE id = $1", key_id
    )
    return valid is True


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def requires(scope: str) -> Callable[[Handler], Handler]:
    """Mark a handler with the scope its caller's key must hold."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, SCOPE_KEY, scope)
        return handler

    return mark


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    scope: str | None = getattr(request.match_info.handler, SCOPE_KEY, None)
    context: AppContext = request.app[AppContext.KEY]
    if scope is None and request.path.startswith("/v1/") and request.match_info.route.resource:
        # Fail closed: a /v1 handler someone forgot to mark is nobody's, not everybody's.
        raise Forbidden("this endpoint declares no scope")
    if scope is None or not context.settings.api_auth:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    kind, _, secret = header.partition(" ")
    if kind.lower() != "bearer" or not secret.strip().startswith(KEY_PREFIX):
        raise AuthError("an API key is required: Authorization: Bearer smsr_...")
    async with context.pool.acquire(timeout=context.settings.db_acquire_timeout_s) as conn:
        key = await find_key(conn, secret.strip())
    if key is None:
        raise AuthError("unknown or revoked API key")
    structlog.contextvars.bind_contextvars(key_name=key.name)  # not a secret: its name
    request[API_KEY] = key
    if scope not in key.scopes and "admin" not in key.scopes:
        raise Forbidden(f"this key lacks the {scope!r} scope", details={"scopes": key.scopes})
    return await handler(request)
