"""API keys on the /v1 API: `Authorization: Bearer smsr_...`, each key with scopes (send, read,
admin); the scope a route needs comes from the route table. Providers' callback URLs, health
checks and the docs are not behind keys."""

from __future__ import annotations

import structlog
from aiohttp import web

from receiver.context import AppContext
from receiver.http.clients import client_address
from receiver.http.errors import AuthError, Forbidden
from receiver.http.routing import Handler, scope_of
from receiver.http.session import CSRF_HEADER, SAFE_METHODS, cookie_secret, csrf_ok
from receiver.storage.apikeys import KEY_PREFIX, ApiKey, find_key, has_key_shape

log = structlog.get_logger("receiver.http.apikeys")

# The request's key, for handlers that outlive the request's start (event streams).
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("api_key", ApiKey)


def caller_of(request: web.Request) -> str:
    """Who a per-caller limit counts: `key <id>`, or `address <client>` when keys are off."""
    key = request.get(API_KEY)
    if key is not None:
        return f"key {key.id}"
    trusted = request.app[AppContext.KEY].settings.trusted_proxies
    return f"address {client_address(request, trusted)}"


async def key_of(context: AppContext, secret: str) -> ApiKey | None:
    """The live key with that secret; a value not shaped like one of ours is refused without
    asking the database (a stranger's guesses cost it nothing)."""
    if not has_key_shape(secret):
        return None
    async with context.db.connection() as connection:
        return await find_key(connection, secret)


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    declared, scope = scope_of(request)
    context: AppContext = request.app[AppContext.KEY]
    if not declared and request.path.startswith("/v1/") and request.match_info.route.resource:
        # Fail closed: a /v1 route outside the route table is nobody's, not everybody's.
        raise Forbidden("this endpoint declares no scope")
    if scope is None or not context.settings.api_auth:
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is None and (session := cookie_secret(request)) is not None:
        # The console's session: the same key, from its cookie. An unsafe request must also
        # carry the CSRF token only the console's pages hold.
        if request.method not in SAFE_METHODS and not csrf_ok(
            session, request.headers.get(CSRF_HEADER)
        ):
            raise Forbidden(f"a request with the console's cookie needs its {CSRF_HEADER}")
        header = f"Bearer {session}"
    kind, _, secret = (header or "").partition(" ")
    secret = secret.strip()
    if kind.lower() != "bearer" or not secret.startswith(KEY_PREFIX):
        raise AuthError("an API key is required: Authorization: Bearer smsr_...")
    key = await key_of(context, secret)
    if key is None:
        raise AuthError("unknown or revoked API key")
    structlog.contextvars.bind_contextvars(key_name=key.name)  # not a secret: its name
    request[API_KEY] = key
    if not key.allows(scope):
        raise Forbidden(f"this key lacks the {scope!r} scope", details={"scopes": key.scopes})
    return await handler(request)
