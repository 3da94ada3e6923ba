"""Callbacks closed by default: a provider with no authentication configured refuses every
callback (401 `callback_auth_not_configured`) and `serve` says so at start; `ALLOW_UNAUTHENTICATED`
opens one on purpose; the simulated providers call back on a token path of their own; refusals
are rate-limited per source before the body is read. (The tests open every provider in
conftest.py: these close them again.)"""

from __future__ import annotations

import asyncio
import json
import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from normalizers.registry import DEFAULT_REGISTRY
from receiver.app import create_app, with_sandbox_tokens
from receiver.config import MIN_TOKEN_LENGTH, ProviderSettings, Settings
from receiver.ingest.route import INGESTION
from tests.helpers import free_port, running_serve

Client = TestClient[Any, Any]
CLOSED = ProviderSettings(allow_unauthenticated=False)
FORGED = {"message_sid": "never-sent", "status": "delivered", "to": "15162065574"}


def settings_with(dsn: str, **changes: Any) -> Settings:
    fields: dict[str, Any] = {"database_url": dsn, "db_pool_min_size": 0}
    return Settings(**(fields | changes))


async def test_a_provider_with_nothing_configured_refuses_every_callback(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = settings_with(dsn, providers={"carrierx": CLOSED})
    client: Client = await aiohttp_client(create_app(settings, dsn))

    answers = [
        await client.post("/callbacks/carrierx", json=FORGED),
        await client.post("/callbacks/carrierx/any-token", json=FORGED),
        await client.get("/callbacks/carrierx", params=FORGED),
    ]

    assert [a.status for a in answers] == [401, 401, 401]
    codes = {(await a.json())["error"]["code"] for a in answers}
    assert codes == {"callback_auth_not_configured"}
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 0
    assert await db.fetchval("SELECT count(*) FROM message_recipients") == 0  # no orphan kept
    await client.app[INGESTION].refusals.flush()
    assert await db.fetchval("SELECT count(*) FROM callback_refusals") == 3


async def test_a_signing_secret_authenticates_only_a_provider_that_signs(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    secret = ProviderSettings(signing_secret=SecretStr("s" * 40), allow_unauthenticated=False)
    settings = settings_with(dsn, providers={"carrierx": secret, "swift": secret})
    client: Client = await aiohttp_client(create_app(settings, dsn))

    carrierx = await client.post("/callbacks/carrierx", json=FORGED)
    swift = await client.post(
        "/callbacks/swift",
        json={"messageId": "m-1", "status": "DELIVRD"},
        headers={"Authorization": f"Bearer {'s' * 40}"},
    )

    # CarrierX documents no signature: its secret would check nothing, so it stays closed.
    assert carrierx.status == 401
    assert (await carrierx.json())["error"]["code"] == "callback_auth_not_configured"
    assert swift.status in (200, 202)  # Swift checks its Bearer secret: authenticated


def test_sandbox_tokens_are_the_configured_one_else_random_per_run() -> None:
    configured = ProviderSettings(callback_token=SecretStr("c" * 32))
    opened = ProviderSettings(allow_unauthenticated=True)
    settings = Settings(
        providers={
            "carrierx": configured,
            "swift": opened,
            "telecom23": CLOSED,
            "apicontrol": CLOSED,
            "properties": CLOSED,
        }
    )

    first = with_sandbox_tokens(settings, DEFAULT_REGISTRY)
    second = with_sandbox_tokens(settings, DEFAULT_REGISTRY)

    def token(of: Settings, name: str) -> str | None:
        value = of.provider(name).callback_token
        return value.get_secret_value() if value is not None else None

    assert token(first, "carrierx") == "c" * 32
    assert token(first, "swift") is None  # opened on purpose: stays open
    random_one = token(first, "telecom23")
    assert random_one is not None
    assert len(random_one) >= MIN_TOKEN_LENGTH
    assert random_one != token(second, "telecom23")  # a new one each run
    assert token(first, "apicontrol") != random_one  # and one per provider


async def wait_for_status(
    session: aiohttp.ClientSession, url: str, message_id: str, wanted: str
) -> dict[str, Any]:
    view: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(f"{url}/v1/messages/{message_id}") as answer:
            view = await answer.json()
        if view["recipients"][0]["status"] == wanted:
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never became {wanted}: {view}")


async def test_a_forged_delivered_is_refused_and_the_real_report_applied(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """A real `serve --sandbox` with CarrierX closed (no token configured): its simulated
    provider calls back on the random token path; a stranger's `delivered` without it changes
    nothing."""
    port = free_port()
    env = {
        "DATABASE_URL": dsn,
        "API_AUTH": "false",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "SANDBOX_DELAY_S": "0.5",
        "CARRIERX__ALLOW_UNAUTHENTICATED": "false",
        "DISPATCHER": "false",
    }
    log = tmp_path / "serve.log"
    with running_serve(port, env, "--sandbox", output=log) as url:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{url}/v1/messages",
                json={
                    "provider": "carrierx",
                    "to": ["+447700900002"],
                    "from": "+447700900999",
                    "body": "hi",
                },
            ) as sent:
                message = await sent.json()
            sid = message["recipients"][0]["provider_message_id"]
            forged = FORGED | {"message_sid": sid, "to": "447700900002"}
            refused = [
                await session.post(f"{url}/callbacks/carrierx", json=forged),
                await session.post(f"{url}/callbacks/carrierx/{'g' * 43}", json=forged),
            ]

            view = await wait_for_status(session, url, message["id"], "undelivered")

            deadline = time.monotonic() + 10
            listed: dict[str, Any] = {"data": []}
            while len(listed["data"]) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)  # refusals are written within a second
                async with session.get(f"{url}/v1/callback-refusals") as answer:
                    listed = await answer.json()

    assert [r.status for r in refused] == [401, 401]
    assert view["recipients"][0]["final"] is True
    assert "delivered" not in [e["status"] for e in view["events"]]
    # Closed without a token, CarrierX got a random one for this run: the forger has not got it.
    assert {r["reason"] for r in listed["data"]} == {"missing or wrong callback token"}
    assert {r["size_bytes"] for r in listed["data"]} == {len(json.dumps(forged))}
    paths = await db.fetch("SELECT DISTINCT path FROM raw_callbacks WHERE source = 'callback'")
    assert [r["path"] for r in paths] == ["/callbacks/carrierx/<token>"]  # the sandbox's
    logged = log.read_text()
    assert "g" * 43 not in logged  # a token in a path is never logged, right or wrong
    assert "/callbacks/carrierx/<token>" in logged


def test_serve_names_closed_and_opened_providers_at_start(dsn: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "DATABASE_URL": dsn,
        "CARRIERX__ALLOW_UNAUTHENTICATED": "false",
        "SWIFT__ALLOW_UNAUTHENTICATED": "true",
        "DISPATCHER": "false",
    }
    log = tmp_path / "serve.log"
    with running_serve(port, env, output=log) as url:
        request = urlopen_status(f"{url}/callbacks/carrierx")

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    closed = [line for line in lines if line["event"] == "callbacks_refused_no_authentication"]
    opened = [line for line in lines if line["event"] == "callbacks_open_without_authentication"]
    assert [(line["provider"], line["level"]) for line in closed] == [("carrierx", "error")]
    assert "CARRIERX__CALLBACK_TOKEN" in closed[0]["hint"]
    assert "swift" in [line["provider"] for line in opened]
    assert request == 401


def urlopen_status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"{}"), timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def test_a_source_refused_too_often_is_429_before_its_body_is_read(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    token = "t" * 32
    settings = settings_with(
        dsn,
        providers={"carrierx": ProviderSettings(callback_token=SecretStr(token))},
        refusal_burst=2,
        refusal_rate_per_s=0.01,
        body_timeout_s=600,
        trusted_proxies=(ip_network("127.0.0.0/8"),),
    )
    client: Client = await aiohttp_client(create_app(settings, dsn))
    attacker = {"X-Forwarded-For": "203.0.113.9"}

    refused = [
        await client.post("/callbacks/carrierx/wrong", json=FORGED, headers=attacker)
        for _ in range(2)
    ]
    limited = await client.post("/callbacks/carrierx/wrong", json=FORGED, headers=attacker)
    # Even with the right token: that source is not heard until its budget refills.
    right_but_limited = await client.post(
        f"/callbacks/carrierx/{token}", json=FORGED, headers=attacker
    )
    provider = await client.post(
        f"/callbacks/carrierx/{token}", json=FORGED, headers={"X-Forwarded-For": "192.0.2.1"}
    )

    assert [r.status for r in refused] == [401, 401]
    assert (limited.status, right_but_limited.status) == (429, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await limited.json())["error"]["code"] == "rate_limited"
    assert provider.status == 200  # another source is heard
    await client.app[INGESTION].refusals.flush()
    assert await db.fetchval("SELECT count(*) FROM callback_refusals") == 2  # 429s cost no row

    # The body is not read: headers announcing one that never comes are answered at once
    # (a read would wait BODY_TIMEOUT_S, 600 s, and this read would time out first).
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(
        b"POST /callbacks/carrierx/wrong HTTP/1.1\r\nHost: x\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\nContent-Length: 100000\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readline(), timeout=30)
    writer.close()
    assert head.startswith(b"HTTP/1.1 429")
