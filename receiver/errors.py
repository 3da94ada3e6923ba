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


class RequestTimeout(ReceiverError):
    status = 408
    code = "request_timeout"


class TooManyRequests(ReceiverError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseUnavailable(ReceiverError):
    status = 503
    code = "database_unavailable"


class BadRequest(ReceiverError):
    status = 400
    code = "bad_request"


# What asyncpg and the OS raise when the database cannot be reached or drops the connection.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
)

# SQLSTATE classes and codes that say "not now" rather than "not this": connection (08),
# read-only (25006), authorisation (28), no such database (3D), rollback on conflict (40),
# resources (53: disk full, out of memory), lock not available (55P03), operator intervention
# (57: shutdown, cancel, database dropped), system (58: I/O). The provider should retry later.
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58"})
_UNAVAILABLE_CODES = frozenset({"25006", "55P03"})

# What the database refuses in the data itself (out of range, bad encoding, constraint, a value
# too large to index): retrying the same bytes cannot help.
_DATA_REFUSAL_CLASSES = frozenset({"22", "23", "54"})


def is_database_unavailable(error: BaseException) -> bool:
    """Whether to answer 503 (retry later) rather than 500."""
    if isinstance(error, asyncpg.PostgresError):
        code = str(error.sqlstate or "")
        return code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES
    return isinstance(error, _CONNECTION_ERRORS)


def is_data_refusal(error: BaseException) -> bool:
    return isinstance(error, asyncpg.PostgresError) and str(error.sqlstate or "")[:2] in (
        _DATA_REFUSAL_CLASSES
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
            headers = None
            if error.status == 503:
                headers = {"Retry-After": str(retry_after_s)}
            elif isinstance(error, TooManyRequests):
                headers = {"Retry-After": error.retry_after}
            response = web.json_response(
                error_body(error.code, error.message, error.details),
                status=error.status,
                headers=headers,
            )
            if isinstance(error, RequestTimeout):
                response.force_close()  # what is left of the body is not worth waiting for
            return response
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
        except Exception as error:
            if isinstance(error, asyncpg.PostgresError) and is_data_refusal(error):
                # A value the database cannot hold (callbacks handle theirs before this).
                return web.json_response(
                    error_body(
                        "invalid_value",
                        "a value of the request cannot be used (a NUL character, a number or"
                        " date out of range)",
                    ),
                    status=400,
                )
            if is_database_unavailable(error):
                log.warning("database_unavailable", error=repr(error))
                return web.json_response(
                    error_body("database_unavailable", "the database is unavailable, retry later"),
                    status=503,
                    headers={"Retry-After": str(retry_after_s)},
                )
            log.exception("unhandled_error")
            return web.json_response(
                error_body("internal_error", "internal error; it has been logged"), status=500
            )

    return error_middleware
