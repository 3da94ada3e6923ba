"""What counts as a secret by its name, and the mark shown in its place: one rule for the logs
and for the raw callbacks the API shows."""

from __future__ import annotations

import functools
import re

REDACTED = "[redacted]"

# Names (log fields, headers, query and body fields) whose value is a secret whatever it looks
# like: credentials, signatures, tokens, cookies and sessions, and keys (`api_key`, `X-Api-Key`,
# `key`; not `key_name`, which names a key without being one).
SECRET_NAME = re.compile(
    r"auth|sig|hmac|secret|token|pass|pwd|cred|cookie|session|api[_-]?key|key$",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=4096)  # asked for every field of every log line
def is_secret_name(name: str) -> bool:
    return SECRET_NAME.search(name) is not None
