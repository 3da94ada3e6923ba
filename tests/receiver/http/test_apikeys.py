"""API keys: Bearer keys with scopes on /v1; callbacks and health stay open."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.app import create_app
from receiver.config import Settings
from receiver.storage.apikeys import create_key, revoke_key

Client = TestClient[Any, Any]


@pytest.fixture
async def guarded(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    settings = Settings(database_url=dsn, db_pool_min_size=0, api_auth=True, dispatcher=False)
    client: Client = await aiohttp_client(create_app(settings, dsn))
    return client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_no_key_or_a_wrong_one_is_401_with_a_json_error(guarded: Client) -> None:
    missing = await guarded.get("/v1/events")
    wrong = await guarded.get("/v1/events", headers=bearer("smsr_not-a-real-key"))
    malformed = await guarded.get("/v1/events", headers={"Authorization": "Basic eDp5"})

    assert (missing.status, wrong.status, malformed.status) == (401, 401, 401)
    assert (await missing.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "secret",
    ["smsr_short", "smsr_" + "A" * 44, "smsr_" + "A" * 42 + "!", "smsr_" + "\u00e9" * 43],
)
async def test_a_malformed_key_is_refused_without_a_database_lookup(
    guarded: Client, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    from receiver.http import apikeys

    async def looked_up(*args: Any) -> None:
        raise AssertionError("the database was asked")

    monkeypatch.setattr(apikeys, "find_key", looked_up)

    answer = await guarded.get("/v1/events", headers={"Authorization": f"Bearer {secret}"})

    assert answer.status == 401
    assert (await answer.json())["error"]["code"] == "unauthorized"


def test_every_key_made_has_the_shape_checked_before_a_lookup() -> None:
    from receiver.storage.apikeys import has_key_shape, new_secret

    assert all(has_key_shape(new_secret()) for _ in range(200))


@pytest.mark.parametrize(
    ("scopes", "method", "path", "allowed"),
    [
        (["read"], "GET", "/v1/events", True),
        (["read"], "GET", "/v1/messages", True),
        (["read"], "GET", "/v1/subscriptions", False),
        (["read"], "POST", "/v1/messages", False),
        (["send"], "GET", "/v1/messages", False),
        (["admin"], "GET", "/v1/subscriptions", True),
        (["admin"], "GET", "/v1/messages", True),
    ],
)
async def test_scopes(
    guarded: Client,
    db: asyncpg.Connection,
    scopes: list[str],
    method: str,
    path: str,
    allowed: bool,
) -> None:
    _, secret = await create_key(db, "test", scopes)

    response = await guarded.request(method, path, headers=bearer(secret), json={})

    if allowed:
        assert response.status < 400
    else:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"


async def test_send_scope_sends(guarded: Client, db: asyncpg.Connection) -> None:
    _, secret = await create_key(db, "app", ["send"])

    response = await guarded.post(
        "/v1/messages",
        headers=bearer(secret),
        json={"provider": "nobody", "to": ["+447700900001"], "body": "x"},
    )

    assert response.status == 400  # past the key check, refused for the unknown provider


async def test_a_revoked_key_stops_working(guarded: Client, db: asyncpg.Connection) -> None:
    key_id, secret = await create_key(db, "old", ["read"])
    assert (await guarded.get("/v1/events", headers=bearer(secret))).status == 200

    assert await revoke_key(db, key_id)

    assert (await guarded.get("/v1/events", headers=bearer(secret))).status == 401


async def test_keys_are_stored_hashed(db: asyncpg.Connection) -> None:
    _, secret = await create_key(db, "hashed", ["read"])

    stored = await db.fetchrow("SELECT prefix, secret_hash FROM api_keys")
    assert stored is not None
    assert secret.startswith(stored["prefix"])
    assert secret.encode() not in bytes(stored["secret_hash"])
    assert len(bytes(stored["secret_hash"])) == 32


async def test_callbacks_and_health_need_no_key(guarded: Client) -> None:
    callback = await guarded.post(
        "/callbacks/carrierx", json={"message_sid": "k-1", "status": "sent", "to": "15162065574"}
    )

    assert callback.status == 200
    assert (await guarded.get("/healthz")).status == 200


def test_the_keys_command(dsn: str, db: asyncpg.Connection) -> None:
    env = {**os.environ, "DATABASE_URL": dsn}
    run = [sys.executable, "-m", "receiver", "keys"]

    created = subprocess.run(
        [*run, "create", "--scope", "read", "--scope", "send", "--name", "billing"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.decode().split()[1]
    assert "smsr_" in created.stdout.decode()

    listed = subprocess.run([*run, "list"], capture_output=True, env=env, timeout=60, check=False)
    assert b"billing" in listed.stdout
    assert b"read,send" in listed.stdout

    revoked = subprocess.run(
        [*run, "revoke", key_id], capture_output=True, env=env, timeout=60, check=False
    )
    assert revoked.returncode == 0
    again = subprocess.run(
        [*run, "revoke", key_id], capture_output=True, env=env, timeout=60, check=False
    )
    assert again.returncode == 1


async def test_a_revoked_keys_stream_ends(guarded: Client, db: asyncpg.Connection) -> None:
    key_id, secret = await create_key(db, "stream", ["read"])
    response = await guarded.get("/v1/events/stream", headers=bearer(secret))
    assert response.status == 200

    await revoke_key(db, key_id)

    async def drained() -> None:
        async for _ in response.content:
            pass

    await asyncio.wait_for(drained(), timeout=10)  # the server closes it within seconds


def test_every_v1_route_declares_a_scope(dsn: str) -> None:
    from receiver.http.routing import ROUTE_ACCESS

    app = create_app(Settings(database_url=dsn), dsn)
    access = app[ROUTE_ACCESS]
    scopes = {route: given.scope for route, given in access.items()}
    unscoped = [
        route.resource.canonical
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method != "HEAD"
        and scopes.get((route.method, route.resource.canonical)) is None
    ]

    assert unscoped == []


def test_a_v1_route_without_a_scope_cannot_be_added() -> None:
    from aiohttp import web

    from receiver.http.routing import Route, add_routes

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(ValueError, match="declares no scope"):
        add_routes(web.Application(), (Route("get", "/v1/open", handler, "Open", {"200": None}),))


async def test_open_event_streams_are_capped_per_key(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = Settings(
        database_url=dsn, db_pool_min_size=0, api_auth=True, dispatcher=False, streams_per_key=2
    )
    client: Client = await aiohttp_client(create_app(settings, dsn))
    _, mine = await create_key(db, "streams", ["read"])
    _, other = await create_key(db, "other", ["read"])

    first = await client.get("/v1/events/stream", headers=bearer(mine))
    second = await client.get("/v1/events/stream", headers=bearer(mine))
    third = await client.get("/v1/events/stream", headers=bearer(mine))
    another_key = await client.get("/v1/events/stream", headers=bearer(other))

    assert (first.status, second.status, third.status, another_key.status) == (200, 200, 429, 200)
    assert (await third.json())["error"]["code"] == "rate_limited"
    assert third.headers["Retry-After"]
    first.close()  # a stream that ends frees its place

    async def reopened() -> int:
        answer = await client.get("/v1/events/stream", headers=bearer(mine))
        status = answer.status
        answer.close()
        return status

    for _ in range(100):
        if await reopened() == 200:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the closed stream's place was not freed")
    for response in (second, another_key):
        response.close()
