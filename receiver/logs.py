"""structlog set-up: JSON lines on stdout, request context carried by contextvars, and secrets
kept out of every line."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import structlog

from receiver.redaction import REDACTED, is_secret_name, redacted

# Secrets recognisable in any text: the hub's API keys and webhook secrets, HTTP credentials,
# and the password in a connection string.
SECRET_TEXT = re.compile(
    r"smsr_[A-Za-z0-9_-]{16,}"
    r"|whsec_[A-Za-z0-9+/=]{16,}"
    r"|(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|(?<=://)[^/\s:@]*:[^/\s@]+(?=@)"
)


class SecretRedactor:
    """Two structlog processors: `fields` (before rendering) masks fields named like secrets,
    nested ones too; `text` (after rendering) masks every secret of the configuration and text
    that looks like a secret, anywhere in the line (an exception's message, a URL, a traceback).
    Working on the rendered line costs a few substring tests per line, not per field."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        # Short values would mask ordinary words: a secret that short is no secret anyway.
        values = {value for value in known if len(value) >= 6}
        values |= {json.dumps(value)[1:-1] for value in values}  # as it appears in JSON text
        self.known = sorted(values, key=len, reverse=True)

    def fields(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if is_secret_name(key):
                event[key] = REDACTED
            elif isinstance(value, dict | list | tuple):
                event[key] = redacted(value)
        return event

    def text(self, logger: Any, method: str, line: Any) -> Any:
        return self.mask(line) if isinstance(line, str) else line

    def mask(self, text: str) -> str:
        for secret in self.known:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if any(marker in text for marker in _MARKERS):  # the pattern only where it may match
            text = SECRET_TEXT.sub(REDACTED, text)
        return text


_MARKERS = ("smsr_", "whsec_", "@", "asic ", "ASIC ", "earer ", "EARER ")


class SecretFilter(logging.Filter):
    """The same masking for records of the standard `logging` module (aiohttp's own, those of
    libraries), message and traceback, which do not go through structlog."""

    def __init__(self, redactor: SecretRedactor) -> None:
        super().__init__()
        self.redactor = redactor
        self.formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.mask(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.mask(record.exc_text)
        return True


def configured_secrets(settings: Any) -> list[str]:
    """Every secret the settings hold: providers' keys, tokens and signing secrets, the opt-out
    list's key, and the databases' and brokers' passwords."""
    found: list[str] = []
    for value in getattr(settings, "providers", {}).values():
        for field in ("api_key", "callback_token", "signing_secret"):
            secret = getattr(value, field, None)
            if secret is not None and hasattr(secret, "get_secret_value"):
                found.append(secret.get_secret_value())
    opt_out_secret = getattr(settings, "opt_out_secret", None)
    if opt_out_secret is not None and hasattr(opt_out_secret, "get_secret_value"):
        found.append(opt_out_secret.get_secret_value())
        found.append(settings.opt_out_pads())
    urls = [getattr(settings, name, None) for name in ("database_url", "database_read_url")]
    # The brokers' URLs (subscriptions' destinations) carry their credentials too.
    urls += [d.url.get_secret_value() for d in getattr(settings, "destinations", {}).values()]
    for url in urls:
        if url:
            password = urlsplit(url).password
            if password:
                found.append(password)
    return found


def configure_logging(level: str = "info", secrets: Iterable[str] = ()) -> None:
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    logging.basicConfig(stream=sys.stderr, level=numeric_level, format="%(message)s")
    # The embedded Postgres narrates every pg_ctl call at INFO; only its problems matter here.
    logging.getLogger("pgserver").setLevel(max(numeric_level, logging.WARNING))
    redactor = SecretRedactor(secrets)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter(redactor))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor.fields,
            structlog.processors.JSONRenderer(),
            redactor.text,  # the rendered line, traceback included
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
