"""The domain's exceptions and the one middleware that turns them, and whatever else a handler
raises, into HTTP answers of one shape: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from receiver.storage.errors import DatabaseUnavailable, is_data_refusal, is_database_unavailable

log = structlog.get_logger("receiver.http.errors")


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


class BadRequest(ReceiverError):
    status = 400
    code = "bad_request"


class Conflict(ReceiverError):
    status = 409
    code = "idempotency_conflict"


class Unprocessable(ReceiverError):
    status = 422
    code = "validation_error"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def make_error_middleware(retry_after_s: int) -> Any:
    def unavailable(message: str) -> web.Response:
        return web.json_response(
            error_body("database_unavailable", message),
            status=503,
            headers={"Retry-After": str(retry_after_s)},
        )

    @web.middleware
    async def error_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ReceiverError as error:
            headers = None
            if isinstance(error, TooManyRequests):
                headers = {"Retry-After": error.retry_after}
            response = web.json_response(
                error_body(error.code, error.message, error.details),
                status=error.status,
                headers=headers,
            )
            if isinstance(error, RequestTimeout):
                response.force_close()  # what is left of the body is not worth waiting for
            return response
        except DatabaseUnavailable as error:  # the hub's own "not now": its reason is told
            return unavailable(str(error))
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
                return unavailable("the database is unavailable, retry later")
            log.exception("unhandled_error")
            return web.json_response(
                error_body("internal_error", "internal error; it has been logged"), status=500
            )

    return error_middleware
