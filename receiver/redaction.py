"""What counts as a secret by its name, and the mark shown in its place: one rule for the logs
and for the raw callbacks the API shows."""

from __future__ import annotations

import functools
import re
from typing import Any

REDACTED = "[redacted]"
# What is stored and logged in place of the secret token of a callback path.
TOKEN_PLACEHOLDER = "<token>"  # noqa: S105 - a placeholder, not a secret

# Names (log fields, headers, query and body fields) whose value is a secret whatever it looks
# like: credentials, signatures, tokens, keys, cookies and sessions.
SECRET_NAME = re.compile(
    r"auth|sig|hmac|secret|token|key|cookie|pass|pwd|cred|session", re.IGNORECASE
)
# Names that identify a key without being one: shown, so that a log line says which key.
NAMES_OF_KEYS = frozenset({"key_name", "key_id", "idempotency_key"})


@functools.lru_cache(maxsize=4096)  # asked for every field of every log line
def is_secret_name(name: str) -> bool:
    return name.lower() not in NAMES_OF_KEYS and SECRET_NAME.search(name) is not None


def redacted(value: Any) -> Any:
    """`value` with the value of every secret-named field masked, at any depth of mappings and
    sequences (a tuple comes back as a list)."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_name(str(k)) else redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value


def path_without_token(path: str, token: str | None) -> str:
    """A callback path as it may be logged or stored: its last segment, the token (right or
    wrong), replaced by a placeholder."""
    if not token:
        return path
    head, _, _ = path.rpartition("/")
    return f"{head}/{TOKEN_PLACEHOLDER}"
