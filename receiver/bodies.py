"""Reading request bodies with a deadline: a client that sends its body slowly (slow loris) is
answered 408 and its connection closed, instead of holding a handler forever."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from receiver.context import AppContext
from receiver.errors import BadRequest, RequestTimeout


async def read_body(request: web.Request) -> bytes:
    timeout_s = request.app[AppContext.KEY].settings.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:  # before OSError, of which it is one
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    except (OSError, RequestPayloadError) as error:
        # A body that breaks off or cannot be decoded (a bad Content-Encoding).
        raise BadRequest(f"could not read the request body: {error}") from None
