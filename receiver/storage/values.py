"""Values as Postgres takes them: text and jsonb hold no NUL character and no lone surrogate."""

from __future__ import annotations

import json
from typing import Any


def storable_text(value: Any) -> Any:
    """Postgres text and jsonb hold no NUL character and no lone surrogate; providers' strings
    (and undecodable header bytes) can hold both. Drop the first, replace the second."""
    if isinstance(value, str):
        if value.isascii():
            return value.replace("\x00", "")
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    if isinstance(value, dict):
        return {storable_text(k): storable_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_text(item) for item in value]
    return value


def storable_json(value: Any) -> str:
    """`value` as JSON Postgres takes as jsonb. JSON escapes every NUL and surrogate (`\\u0000`,
    `\\udXXX`), so a text without those needs no cleaning, which is nearly always."""
    text = json.dumps(value, separators=(",", ":"))
    if "\\u0000" in text or "\\ud" in text:
        text = json.dumps(storable_text(value), separators=(",", ":"))
    return text
