"""Secrets never reach the logs: fields named like secrets, text that looks like one, and every
secret of the configuration, wherever it appears."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from pydantic import SecretStr, ValidationError

from receiver.config import ProviderSettings, Settings
from receiver.logs import (
    SecretFilter,
    SecretRedactor,
    configure_logging,
    configured_secrets,
)
from receiver.redaction import REDACTED

API_KEY = "smsr_" + "A" * 43
WEBHOOK_SECRET = "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
TOKEN = "path-token-7f3a9c"


def render(**fields: object) -> str:
    out = io.StringIO()
    redactor = SecretRedactor([TOKEN, 'hunter2-db-"password'])
    logger = structlog.wrap_logger(
        structlog.PrintLogger(file=out),
        processors=[
            structlog.processors.format_exc_info,
            redactor.fields,
            structlog.processors.JSONRenderer(),
            redactor.text,
        ],
    )
    logger.info("something_happened", **fields)
    return out.getvalue()


def test_fields_named_like_secrets_are_masked_whatever_they_hold() -> None:
    line = json.loads(
        render(
            callback_token="anything",
            headers={"Authorization": "xyz", "X-Api-Key": "k", "Content-Type": "text/plain"},
            signing_secret="s",
            password="p",
        )
    )

    assert line["callback_token"] == REDACTED
    assert line["signing_secret"] == REDACTED
    assert line["password"] == REDACTED
    assert line["headers"] == {
        "Authorization": REDACTED,
        "X-Api-Key": REDACTED,
        "Content-Type": "text/plain",
    }


def test_secrets_inside_text_are_masked() -> None:
    text = render(
        error=f"rejected key {API_KEY} for /callbacks/carrierx/{TOKEN}",
        url="postgresql://receiver:pw-in-url-9@db.internal:5432/hub",
        dsn='host=db password=hunter2-db-"password',
        detail=f"Authorization: Bearer abcdefgh12345678, secret {WEBHOOK_SECRET}",
        plain="delivered to +15550000001",
    )

    for secret in (API_KEY, TOKEN, "pw-in-url-9", "hunter2-db", "abcdefgh12345678", WEBHOOK_SECRET):
        assert secret not in text
    line = json.loads(text)
    assert line["url"] == f"postgresql://{REDACTED}@db.internal:5432/hub"
    assert line["plain"] == "delivered to +15550000001"
    assert line["event"] == "something_happened"


def test_a_secret_in_an_exception_is_masked_in_the_traceback() -> None:
    try:
        raise ValueError(f"could not connect with {TOKEN}")
    except ValueError:
        text = render(exc_info=True)

    assert TOKEN not in text
    assert "could not connect with" in text


def test_the_configuration_s_secrets_are_known_to_the_logs() -> None:
    settings = Settings(
        database_url="postgresql://u:dbpass-123456@127.0.0.1/x",
        providers={
            "carrierx": ProviderSettings(
                callback_token=SecretStr(TOKEN), api_key=SecretStr("cx-api-key-123")
            ),
            "telecom23": ProviderSettings(signing_secret=SecretStr("tc-signing-987654")),
        },
    )

    found = configured_secrets(settings)

    assert {TOKEN, "cx-api-key-123", "tc-signing-987654", "dbpass-123456"} <= set(found)
    previous = structlog.get_config()
    try:
        configure_logging("info", found)
        processors = structlog.get_config()["processors"]
        redactor = processors[-1].__self__
        assert isinstance(redactor, SecretRedactor)
        assert processors[-1] == redactor.text  # the rendered line, last
        assert processors[-3] == redactor.fields  # before rendering
        assert redactor.mask(f"x {TOKEN} y") == f"x {REDACTED} y"
    finally:
        structlog.configure(**previous)


def test_records_of_the_standard_logging_module_are_masked_too() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SecretFilter(SecretRedactor([TOKEN])))
    logger = logging.getLogger("test.aiohttp.server")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("bad header: %s", f"Authorization: Bearer {API_KEY}")
        try:
            raise ValueError(f"token {TOKEN}")
        except ValueError:
            logger.exception("unhandled")
    finally:
        logger.removeHandler(handler)

    text = out.getvalue()
    assert API_KEY not in text
    assert TOKEN not in text
    assert "bad header" in text
    assert "ValueError" in text  # the traceback is kept, masked


def test_configure_logging_filters_the_root_handlers() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    previous = structlog.get_config()
    try:
        configure_logging("info", [TOKEN])
        assert any(isinstance(f, SecretFilter) for f in handler.filters)
    finally:
        root.removeHandler(handler)
        structlog.configure(**previous)


def test_an_invalid_setting_does_not_print_the_secrets_beside_it() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(
            database_url="postgresql://u:supersecretpw@127.0.0.1/x",
            providers={"carrierx": ProviderSettings(api_key=SecretStr("cx-api-key-verysecret"))},
            webhook_lease_s=5,  # must exceed the webhook timeout + 1: refused
        )

    assert "supersecretpw" not in str(refused.value)
    assert "cx-api-key-verysecret" not in str(refused.value)
