"""Callback authenticity: the secret token in the path, the source-address allow-list, and the
provider's own check; every refused callback is still stored, as `rejected`."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from normalizers.registry import DEFAULT_REGISTRY
from receiver.app import create_app
from receiver.config import ProviderSettings, Settings

REPORT = {"message_sid": "auth-1", "status": "delivered", "to": "15162065574"}
Client = TestClient[Any, Any]


async def client_with(aiohttp_client: Any, dsn: str, carrierx: ProviderSettings) -> Client:
    settings = Settings(database_url=dsn, db_pool_min_size=0, providers={"carrierx": carrierx})
    client: Client = await aiohttp_client(create_app(settings, dsn))
    return client


async def test_the_right_token_in_the_path_is_accepted_and_not_stored(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await client_with(
        aiohttp_client, dsn, ProviderSettings(callback_token=SecretStr("s3cret-token"))
    )

    response = await client.post("/callbacks/carrierx/s3cret-token", json=REPORT)

    assert response.status == 200
    raw = await db.fetchrow("SELECT outcome, path FROM raw_callbacks")
    assert raw is not None
    assert raw["outcome"] == "normalised"
    assert raw["path"] == "/callbacks/carrierx/<token>"  # the secret never reaches the database


@pytest.mark.parametrize("path", ["/callbacks/carrierx", "/callbacks/carrierx/wrong-token"])
async def test_a_missing_or_wrong_token_is_401_and_stored_as_rejected(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, path: str
) -> None:
    client = await client_with(
        aiohttp_client, dsn, ProviderSettings(callback_token=SecretStr("s3cret-token"))
    )

    response = await client.post(path, json=REPORT)

    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    raw = await db.fetchrow("SELECT outcome, error, body FROM raw_callbacks")
    assert raw is not None
    assert raw["outcome"] == "rejected"
    assert raw["error"] == "missing or wrong callback token"
    assert bytes(raw["body"]).startswith(b'{"message_sid"')
    assert await db.fetchval("SELECT count(*) FROM events") == 0


async def test_a_source_outside_the_allow_list_is_403(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await client_with(
        aiohttp_client, dsn, ProviderSettings.model_validate({"allowed_ips": "10.0.0.0/8"})
    )

    response = await client.post("/callbacks/carrierx", json=REPORT)

    assert response.status == 403
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "rejected"


async def test_a_source_inside_the_allow_list_is_accepted(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await client_with(
        aiohttp_client,
        dsn,
        ProviderSettings.model_validate({"allowed_ips": "10.0.0.0/8, 127.0.0.1"}),
    )

    response = await client.post("/callbacks/carrierx", json=REPORT)

    assert response.status == 200


async def test_without_configuration_any_path_token_is_accepted(
    client: Client, db: asyncpg.Connection
) -> None:
    response = await client.post("/callbacks/carrierx/anything", json=REPORT)

    assert response.status == 200


def test_provider_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARRIERX__CALLBACK_TOKEN", "from-env")
    monkeypatch.setenv("CARRIERX__ALLOWED_IPS", "192.0.2.0/24,2001:db8::1")

    settings = Settings()

    carrierx = settings.provider("carrierx")
    assert carrierx.callback_token is not None
    assert carrierx.callback_token.get_secret_value() == "from-env"
    assert [str(n) for n in carrierx.allowed_ips] == ["192.0.2.0/24", "2001:db8::1/128"]
    assert settings.provider("swift").callback_token is None
    assert "from-env" not in repr(settings)  # secrets stay out of logs and tracebacks


def test_an_unknown_provider_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARIERX__CALLBACK_TOKEN", "a typo")  # not carrierx
    monkeypatch.setenv("WEBHOOK__NOT_A_PROVIDER_FIELD", "ignored")

    settings = Settings()

    assert settings.unknown_providers(DEFAULT_REGISTRY) == ["carierx"]
    assert settings.provider("carrierx").callback_token is None


def test_serve_refuses_to_start_with_an_unknown_provider(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from receiver.cli import main

    monkeypatch.setenv("CARIERX__CALLBACK_TOKEN", "a typo")

    with pytest.raises(SystemExit) as stopped:
        main(["serve"])

    assert stopped.value.code == 2
    assert "unknown providers: carierx" in capsys.readouterr().err
