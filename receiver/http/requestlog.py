"""One JSON log line per request, with a request id (the caller's when short and plain) and
whatever the handler bound (provider, outcome...), and its latency in /metrics."""

from __future__ import annotations

import random
import re
import time

import structlog
from aiohttp import web

from receiver.http.routing import Handler
from receiver.metrics import REQUESTS
from receiver.redaction import path_without_token

log = structlog.get_logger("receiver.http")

# Metric labels must not come from what a client invents.
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# A caller's request id is echoed and logged only when it is short and plain.
_REQUEST_ID = re.compile(r"[\w.:-]{1,128}")


def request_id() -> str:
    """An id for a request's log lines, when the caller sent none."""
    return f"{random.getrandbits(128):032x}"


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-ID", "")
    this_request = given if _REQUEST_ID.fullmatch(given) else request_id()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=this_request)
    started = time.perf_counter()
    # Stays so only if the handler never returned: cancelled (client gone, shutdown timeout).
    status: int | str = "cancelled"
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-ID"] = this_request
        return response
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in KNOWN_METHODS else "OTHER"
        REQUESTS.labels(method, route, str(status)).observe(elapsed)
        log.info(
            "request",
            method=request.method,
            path=path_without_token(request.path, request.match_info.get("token")),
            status=status,
            latency_ms=round(elapsed * 1000, 2),
        )
        structlog.contextvars.clear_contextvars()
