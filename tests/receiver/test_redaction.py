"""One rule of what is a secret by its name, for the logs and for the raw callbacks the API
shows: the same names masked in both, and the names that only identify a key shown."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from receiver.logs import SecretRedactor
from receiver.redaction import REDACTED, is_secret_name, redacted

SECRET_NAMES = [
    "Authorization",
    "X-Api-Key",
    "api_key",
    "apikey",
    "key",
    "private_key_pem",
    "keys",
    "X-Key-Id",
    "token",
    "callback_token",
    "password",
    "passwd",
    "Cookie",
    "X-Webhook-Signature",
    "hmac",
    "session_id",
    "credentials",
    "signing_secret",
]
PLAIN_NAMES = ["key_name", "key_id", "idempotency_key", "provider", "message_id", "status", "to"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_secret_name_is_masked_in_logs_and_views(name: str) -> None:
    assert is_secret_name(name)
    line = SecretRedactor().fields(None, "info", {name: "s3cr3t-value", "nested": {name: "x"}})
    assert line[name] == REDACTED
    assert line["nested"] == {name: REDACTED}
    assert redacted([{name: "s3cr3t-value"}]) == [{name: REDACTED}]


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_a_name_that_only_identifies_is_shown(name: str) -> None:
    assert not is_secret_name(name)
    assert SecretRedactor().fields(None, "info", {name: "v"})[name] == "v"


async def test_the_raw_callback_view_masks_by_the_same_rule(
    client: TestClient[Any, Any],
) -> None:
    body = {name: "s3cr3t-value" for name in SECRET_NAMES} | {"key_name": "shown"}
    stored = await client.post(
        "/callbacks/carrierx?api_key=q-secret&page=1",
        data=json.dumps(body),
        headers={"Content-Type": "application/json", "X-Key-Id": "h-secret"},
    )
    raw_id = (await stored.json())["raw_id"]

    view = await (await client.get(f"/v1/raw-callbacks/{raw_id}")).json()

    assert "s3cr3t-value" not in view["body"]
    assert "secret" not in view["query"]
    assert json.loads(view["body"])["key_name"] == "shown"
    assert dict(view["headers"])["X-Key-Id"] == REDACTED
    assert "page=1" in view["query"]
