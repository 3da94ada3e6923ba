"""Callback authenticity: the secret token in the path, the source-address allow-list, and the
provider's own check; a refused callback leaves only its metadata (callback_refusals)."""

from __future__ import annotations

import hashlib
import json
from ipaddress import ip_network
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from normalizers.registry import DEFAULT_REGISTRY
from receiver.app import create_app
from receiver.config import ProviderSettings, Settings
from receiver.ingest.route import INGESTION

REPORT = {"message_sid": "auth-1", "status": "delivered", "to": "15162065574"}
Client = TestClient[Any, Any]


async def refusals(client: Client, db: asyncpg.Connection) -> list[asyncpg.Record]:
    """The refusals recorded, once those waiting in memory are written."""
    await client.app[INGESTION].refusals.flush()
    return list(await db.fetch("SELECT * FROM callback_refusals ORDER BY received_at"))


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
async def test_a_missing_or_wrong_token_is_401_and_only_its_metadata_is_kept(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, path: str
) -> None:
    client = await client_with(
        aiohttp_client, dsn, ProviderSettings(callback_token=SecretStr("s3cret-token"))
    )
    body = json.dumps(REPORT).encode()

    response = await client.post(
        path, data=body, headers={"Content-Type": "application/json", "Cookie": "session=abc"}
    )

    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 0
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    [refusal] = await refusals(client, db)
    assert refusal["provider"] == "carrierx"
    assert refusal["reason"] == "missing or wrong callback token"
    assert (refusal["status"], refusal["method"], refusal["remote_addr"]) == (
        401,
        "POST",
        "127.0.0.1",
    )
    assert refusal["size_bytes"] == len(body)
    assert bytes(refusal["body_sha256"]) == hashlib.sha256(body).digest()
    assert set(dict(refusal)) == {  # the body, headers, path and query are not kept
        "id",
        "received_at",
        "provider",
        "method",
        "remote_addr",
        "reason",
        "status",
        "size_bytes",
        "body_sha256",
    }


async def test_a_source_outside_the_allow_list_is_403(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await client_with(
        aiohttp_client, dsn, ProviderSettings.model_validate({"allowed_ips": "10.0.0.0/8"})
    )

    response = await client.post("/callbacks/carrierx", json=REPORT)

    assert response.status == 403
    assert [r["status"] for r in await refusals(client, db)] == [403]
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 0


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


async def test_opened_on_purpose_any_path_token_is_accepted(
    client: Client, db: asyncpg.Connection
) -> None:  # the tests open every provider (ALLOW_UNAUTHENTICATED, in conftest)
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


async def proxied_client(aiohttp_client: Any, dsn: str, **changes: Any) -> Client:
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        providers={"carrierx": ProviderSettings(allowed_ips=(ip_network("192.0.2.0/24"),))},
        **changes,
    )
    client: Client = await aiohttp_client(create_app(settings, dsn))
    return client


async def test_without_trusted_proxies_x_forwarded_for_is_not_believed(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await proxied_client(aiohttp_client, dsn)

    forged = await client.post(
        "/callbacks/carrierx", json=REPORT, headers={"X-Forwarded-For": "192.0.2.5"}
    )

    assert forged.status == 403  # the TCP peer (127.0.0.1) is what counts
    assert [r["remote_addr"] for r in await refusals(client, db)] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("forwarded", "status", "client"),
    [
        ("192.0.2.5", 200, "192.0.2.5"),  # the proxy saw the provider
        ("198.51.100.7, 192.0.2.5", 200, "192.0.2.5"),  # whatever the provider itself sent
        ("192.0.2.5, 198.51.100.7", 403, "198.51.100.7"),  # a forged hop left of the real one
        ("192.0.2.5, 10.0.0.2", 200, "192.0.2.5"),  # two trusted proxies in a row
    ],
)
async def test_behind_a_trusted_proxy_the_client_is_the_right_most_untrusted_hop(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, forwarded: str, status: int, client: str
) -> None:
    proxied = await proxied_client(
        aiohttp_client, dsn, trusted_proxies=(ip_network("127.0.0.0/8"), ip_network("10.0.0.0/8"))
    )

    answer = await proxied.post(
        "/callbacks/carrierx", json=REPORT, headers={"X-Forwarded-For": forwarded}
    )

    assert answer.status == status
    if status == 200:
        assert await db.fetchval("SELECT remote_addr FROM raw_callbacks") == client
    else:
        assert [r["remote_addr"] for r in await refusals(proxied, db)] == [client]


def test_trusted_proxies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")

    assert [str(n) for n in Settings().trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [("::ffff:192.0.2.5", True), ("192.0.2.5", True), ("::ffff:198.51.100.7", False), ("x", False)],
)
def test_an_ipv4_mapped_peer_matches_an_ipv4_allow_list(remote: str, allowed: bool) -> None:
    from receiver.ingest.auth import _allowed

    config = ProviderSettings(allowed_ips=(ip_network("192.0.2.0/24"),))

    assert _allowed(remote, config) is allowed


def test_serve_refuses_a_callback_token_shorter_than_32_characters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from receiver.cli import main

    monkeypatch.setenv("SWIFT__CALLBACK_TOKEN", "x" * 31)
    monkeypatch.setenv("CARRIERX__CALLBACK_TOKEN", "x" * 32)  # long enough

    with pytest.raises(SystemExit) as stopped:
        main(["serve"])

    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "SWIFT__CALLBACK_TOKEN: a callback token must be at least 32 characters" in error
    assert "CARRIERX" not in error
    assert "secrets.token_urlsafe(32)" in error
