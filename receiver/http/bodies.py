"""Reading request bodies: with a deadline (a client that sends its body slowly, slow loris, is
answered 408 and its connection closed instead of holding a handler forever), and into a
pydantic model (an invalid body is a 422 naming each field)."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from receiver.context import AppContext
from receiver.http.errors import BadRequest, RequestTimeout, Unprocessable

Model = TypeVar("Model", bound=BaseModel)


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


async def read_model(request: web.Request, model: type[Model]) -> Model:
    """The body as `model`; a 422 with one detail per invalid field otherwise."""
    body = await read_body(request)
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise Unprocessable("the request is not valid", details=field_errors(error)) from None


def field_errors(error: ValidationError) -> list[dict[str, Any]]:
    """Validation errors as the API details them: the field's dotted path and what is wrong."""
    return [
        {"field": ".".join(str(part) for part in e["loc"]) or "body", "error": e["msg"]}
        for e in error.errors()
    ]
