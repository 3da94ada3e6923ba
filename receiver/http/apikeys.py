"""API keys on the /v1 API: `Authorization: Bearer smsr_...`, each key with scopes (send, read,
admin) and a tenant (or none: an operator key); what a route needs comes from the route table.
Who is asking (`Asker`: the key's tenant, or the operator) is set on the request here, once,
and handed to the storage functions by the handlers. Providers' callback URLs, health checks and
the docs are not behind keys."""

from __future__ import annotations

import structlog
from aiohttp import web

from receiver.context import AppContext
from receiver.http.clients import client_address
from receiver.http.errors import AuthError, Forbidden, ReceiverError
from receiver.http.routing import Handler, access_of
from receiver.http.session import CSRF_HEADER, SAFE_METHODS, cookie_secret, csrf_ok
from receiver.storage.apikeys import KEY_PREFIX, ApiKey, find_key, has_key_shape
from receiver.storage.tenants import Asker

log = structlog.get_logger("receiver.http.apikeys")

# The request's key, for handlers that outlive the request's start (event streams).
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("api_key", ApiKey)
# Who is asking, set for every request of a route behind keys (the operator with keys off).
ASKER: web.RequestKey[Asker] = web.RequestKey("asker", Asker)


class TenantDisabled(ReceiverError):
    status = 403
    code = "tenant_disabled"


class OperatorOnly(ReceiverError):
    status = 403
    code = "operator_only"


def who_of(request: web.Request) -> str:
    """Who made a change, as the history keeps it: the API key's name and id, or the operator
    of a hub without keys."""
    key = request.get(API_KEY)
    return f"api key {key.name} ({key.id})" if key is not None else "operator (API_AUTH off)"


def asker_of(request: web.Request) -> Asker:
    """Who is asking: set by the key check for every route behind keys. A handler reached
    without it (a route the check did not see) reaches nothing."""
    asker: Asker | None = request.get(ASKER)
    if asker is None:
        raise Forbidden("this endpoint declares no scope")
    return asker


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


def refuse_disabled(key: ApiKey) -> None:
    """A key of a disabled tenant is refused, saying so."""
    if key.disabled_tenant is not None:
        raise TenantDisabled(
            f"the tenant {key.disabled_tenant!r} of this key is disabled",
            details={"tenant": key.disabled_tenant},
        )


@web.middleware
async def api_key_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = access_of(request)
    context: AppContext = request.app[AppContext.KEY]
    if access is None and request.path.startswith("/v1/") and request.match_info.route.resource:
        # Fail closed: a /v1 route outside the route table is nobody's, not everybody's.
        raise Forbidden("this endpoint declares no scope")
    if access is None or access.scope is None:
        return await handler(request)
    if not context.settings.api_auth:
        request[ASKER] = Asker.OPERATOR  # a laptop's hub: whoever reaches it runs it
        return await handler(request)
    scope = access.scope
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
    refuse_disabled(key)
    request[API_KEY] = key
    if not key.allows(scope):
        raise Forbidden(f"this key lacks the {scope!r} scope", details={"scopes": key.scopes})
    if access.operator and key.tenant is not None:
        raise OperatorOnly(
            "only an operator key (of no tenant) may use this endpoint",
            details={"tenant": key.tenant.name},
        )
    request[ASKER] = key.asker
    if key.tenant is not None:
        structlog.contextvars.bind_contextvars(tenant=key.tenant.name)
    return await handler(request)
