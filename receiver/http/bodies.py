"""Reading request bodies: with a deadline (a client that sends its body slowly, slow loris, is
answered 408 and its connection closed instead of holding a handler forever), and into a
pydantic model (an invalid body is a 422 naming each field)."""

from __future__ import annotations

import asyncio
import json
import math
import re
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
        # by alias alone: a body writes `from`, as the document says, never the field's name
        found = model.model_validate_json(whole_numbers(body), strict=True, by_name=False)
    except ValidationError as error:
        raise Unprocessable("the request is not valid", details=field_errors(error)) from None
    if b"u0000" in body:  # where no field's own rule refused it (a provider's options, say)
        _refuse_nul(body)
    return found


def _refuse_nul(body: bytes) -> None:
    """A 422 naming the first field whose text holds a NUL character (Postgres keeps none,
    and the document allows none in any string)."""

    def where(value: Any, path: str) -> str | None:
        if isinstance(value, str):
            return path if "\x00" in value else None
        if isinstance(value, dict):
            items: Any = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            return None
        for key, item in items:
            if isinstance(key, str) and "\x00" in key:
                return f"{path}.{key!r}".lstrip(".")
            found = where(item, f"{path}.{key}".lstrip("."))
            if found is not None:
                return found
        return None

    try:
        found = where(json.loads(body), "")
    except (ValueError, RecursionError):
        return  # not JSON: the model says so
    if found is not None:
        raise Unprocessable(
            "the request is not valid",
            details=[{"field": found or "body", "error": "must not contain a NUL character"}],
        )


def _integral(text: str) -> int | float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return int(number) if number.is_integer() else number


# A number JSON writes with a fraction or an exponent that may be whole (2.0, 2.50e1, 2E3).
MAYBE_WHOLE = re.compile(rb"[0-9]\.0*[0-9]*[eE]|[0-9]\.0+(?![0-9])|[0-9][eE]")


def whole_numbers(body: bytes) -> bytes | str:
    """The body with each number of no fraction written as an integer (2418.0 as 2418), as
    JSON Schema counts it, so that the strict models take it where an integer is due; a body
    that is no JSON, or holds no such number, goes to the model as it came (read once)."""
    if MAYBE_WHOLE.search(body) is None:
        return body
    try:
        return json.dumps(json.loads(body, parse_float=_integral))
    except (ValueError, RecursionError):
        return body


def field_errors(error: ValidationError) -> list[dict[str, Any]]:
    """Validation errors as the API details them: the field's dotted path and what is wrong."""
    return [
        {"field": ".".join(str(part) for part in e["loc"]) or "body", "error": e["msg"]}
        for e in error.errors()
    ]
