"""The domain's exceptions and the one middleware that turns them into HTTP answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from aiohttp import web

log = structlog.get_logger("receiver.errors")


class ReceiverError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ReceiverError):
    status = 404
    code = "not_found"


class AuthError(ReceiverError):
    status = 401
    code = "unauthorized"


class Forbidden(ReceiverError):
    status = 403
    code = "forbidden"


class PayloadTooLarge(ReceiverError):
    status = 413
    code = "payload_too_large"


class DatabaseUnavailable(ReceiverError):
    status = 503
    code = "database_unavailable"


# What asyncpg and the OS raise when the database cannot be reached or drops the connection:
# the provider should retry later, so these become 503, never 500.
DATABASE_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.QueryCanceledError,
)


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def make_error_middleware(retry_after_s: int) -> Any:
    @web.middleware
    async def error_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ReceiverError as error:
            headers = {"Retry-After": str(retry_after_s)} if error.status == 503 else None
            return web.json_response(
                error_body(error.code, error.message, error.details),
                status=error.status,
                headers=headers,
            )
        except web.HTTPRequestEntityTooLarge as error:
            return web.json_response(
                error_body("payload_too_large", error.text or "request body too large"),
                status=413,
            )
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return web.json_response(
                error_body(error.reason.lower().replace(" ", "_"), error.reason),
                status=error.status,
                headers={k: v for k, v in error.headers.items() if k.lower() == "allow"},
            )
        except DATABASE_DOWN_ERRORS as error:
            log.warning("database_unavailable", error=repr(error))
            return web.json_response(
                error_body("database_unavailable", "the database is unavailable, retry later"),
                status=503,
                headers={"Retry-After": str(retry_after_s)},
            )
        except Exception:
            log.exception("unhandled_error")
            return web.json_response(
                error_body("internal_error", "internal error; it has been logged"), status=500
            )

    return error_middleware
