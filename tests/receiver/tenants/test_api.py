"""The tenants through the HTTP API (operator keys only): made, listed, changed, their numbers;
and what a tenant's settings do to its keys, its sends, its held messages and its
subscriptions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.storage import messages, outbox
from receiver.storage.apikeys import create_key
from receiver.storage.tenants import NAME_RULE, create_tenant
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]

OWNED = "+447700900990"
OWNED_IN_PATH = "%2B447700900990"
RECIPIENT = "+447700900021"  # delivered by the simulated providers


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
async def hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    """A hub with keys on, its simulated providers, and no dispatcher or scheduler of its own
    (the tests claim held messages and deliveries themselves)."""
    return await sandbox_hub(aiohttp_client, dsn, api_auth=True)


@pytest.fixture
async def ops(db: asyncpg.Connection) -> dict[str, str]:
    """The headers of an operator key."""
    _, secret = await create_key(db, "ops", ["admin"], None)
    return bearer(secret)


async def error_of(answer: Any) -> dict[str, Any]:
    body: dict[str, Any] = await answer.json()
    error: dict[str, Any] = body["error"]
    return error


async def tenant_key(db: asyncpg.Connection, tenant: str, *scopes: str) -> dict[str, str]:
    _, secret = await create_key(db, f"{tenant}-app", list(scopes or ("admin",)), tenant)
    return bearer(secret)


# --- the tenants --------------------------------------------------------------------------------


async def test_the_operator_creates_lists_and_reads_a_tenant(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    created = await hub.post(
        "/v1/tenants",
        json={"name": "alpha", "providers": ["swift"], "send_burst": 5},
        headers=ops,
    )

    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["name"] == "alpha"
    assert body["enabled"] is True
    assert body["providers"] == ["swift"]
    assert body["send_burst"] == 5
    assert body["send_rate_per_s"] is None
    assert body["daily_recipients"] is None
    assert body["numbers"] == []
    assert body["keys"] == 0
    assert body["disabled_at"] is None
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    stored = await db.fetchrow(
        "SELECT enabled, providers, send_burst FROM tenants WHERE name = 'alpha'"
    )
    assert stored is not None
    assert (stored["enabled"], stored["providers"], stored["send_burst"]) == (True, ["swift"], 5)

    await tenant_key(db, "alpha", "read")
    listed = await hub.get("/v1/tenants", headers=ops)
    assert listed.status == 200
    tenants = {t["name"]: t for t in (await listed.json())["data"]}
    assert set(tenants) == {"alpha", "default"}
    assert tenants["alpha"]["keys"] == 1
    assert tenants["default"]["providers"] is None

    one = await hub.get("/v1/tenants/alpha", headers=ops)
    assert one.status == 200
    assert await one.json() == tenants["alpha"]


async def test_the_operator_changes_a_tenant(hub: Client, ops: dict[str, str]) -> None:
    assert (await hub.post("/v1/tenants", json={"name": "alpha"}, headers=ops)).status == 201

    disabled = await hub.patch("/v1/tenants/alpha", json={"enabled": False}, headers=ops)
    assert disabled.status == 200, await disabled.text()
    body = await disabled.json()
    assert body["enabled"] is False
    assert body["disabled_at"] is not None

    limited = await hub.patch(
        "/v1/tenants/alpha",
        json={
            "providers": ["swift", "carrierx", "swift"],
            "send_rate_per_s": 2.5,
            "send_burst": 3,
            "daily_recipients": 100,
        },
        headers=ops,
    )
    assert limited.status == 200, await limited.text()
    body = await limited.json()
    assert body["providers"] == ["carrierx", "swift"]  # each once, in order
    assert (body["send_rate_per_s"], body["send_burst"], body["daily_recipients"]) == (2.5, 3, 100)
    assert body["enabled"] is False  # what was not given stays

    enabled = await hub.patch(
        "/v1/tenants/alpha",
        json={"enabled": True, "providers": None, "send_burst": None},
        headers=ops,
    )
    assert enabled.status == 200, await enabled.text()
    body = await enabled.json()
    assert body["enabled"] is True
    assert body["disabled_at"] is None
    assert body["providers"] is None  # every configured provider again
    assert body["send_burst"] is None  # the hub's setting again
    assert (body["send_rate_per_s"], body["daily_recipients"]) == (2.5, 100)
    again = await (await hub.get("/v1/tenants/alpha", headers=ops)).json()
    assert again == body


@pytest.mark.parametrize("name", ["Bad Name!", "UPPER", "", "-leading", "a b", "é"])
async def test_a_name_that_breaks_the_rule_is_a_422_naming_it(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection, name: str
) -> None:
    answer = await hub.post("/v1/tenants", json={"name": name}, headers=ops)

    assert answer.status == 422, await answer.text()
    error = await error_of(answer)
    assert error["code"] == "invalid_tenant_name"
    assert NAME_RULE in error["message"]
    assert await db.fetchval("SELECT count(*) FROM tenants") == 1  # `default` alone


async def test_a_name_of_64_characters_is_refused_as_every_bad_name(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    answer = await hub.post("/v1/tenants", json={"name": "a" * 64}, headers=ops)

    assert answer.status == 422, await answer.text()
    error = await error_of(answer)
    assert error["code"] == "invalid_tenant_name"
    assert [detail["field"] for detail in error["details"]] == ["name"]
    assert "63" in error["details"][0]["error"]
    assert await db.fetchval("SELECT count(*) FROM tenants") == 1


async def test_the_longest_name_is_63_characters(hub: Client, ops: dict[str, str]) -> None:
    answer = await hub.post("/v1/tenants", json={"name": "a" * 63}, headers=ops)

    assert answer.status == 201, await answer.text()


async def test_a_taken_name_is_a_409(hub: Client, ops: dict[str, str]) -> None:
    first = await hub.post("/v1/tenants", json={"name": "alpha"}, headers=ops)
    again = await hub.post("/v1/tenants", json={"name": "alpha", "send_burst": 9}, headers=ops)

    assert first.status == 201
    assert again.status == 409
    error = await error_of(again)
    assert error["code"] == "tenant_exists"
    assert "'alpha'" in error["message"]
    unchanged = await (await hub.get("/v1/tenants/alpha", headers=ops)).json()
    assert unchanged["send_burst"] is None


async def test_an_unknown_tenant_is_a_404(hub: Client, ops: dict[str, str]) -> None:
    read = await hub.get("/v1/tenants/nope", headers=ops)
    changed = await hub.patch("/v1/tenants/nope", json={"enabled": False}, headers=ops)

    assert read.status == 404
    assert changed.status == 404
    assert (await error_of(read))["code"] == "not_found"
    assert "'nope'" in (await error_of(changed))["message"]


async def test_an_unknown_provider_is_a_422_naming_it(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    created = await hub.post(
        "/v1/tenants", json={"name": "alpha", "providers": ["swift", "nosuch"]}, headers=ops
    )
    assert created.status == 422
    error = await error_of(created)
    assert error["code"] == "unknown_provider"
    assert "nosuch" in error["message"]
    assert await db.fetchval("SELECT count(*) FROM tenants WHERE name = 'alpha'") == 0

    assert (await hub.post("/v1/tenants", json={"name": "alpha"}, headers=ops)).status == 201
    changed = await hub.patch("/v1/tenants/alpha", json={"providers": ["nosuch"]}, headers=ops)
    assert changed.status == 422
    assert (await error_of(changed))["code"] == "unknown_provider"
    assert await db.fetchval("SELECT providers FROM tenants WHERE name = 'alpha'") is None


# --- the numbers --------------------------------------------------------------------------------


async def test_a_number_is_one_tenants(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    for name in ("alpha", "beta"):
        assert (await hub.post("/v1/tenants", json={"name": name}, headers=ops)).status == 201

    added = await hub.post("/v1/tenants/alpha/numbers", json={"number": OWNED}, headers=ops)
    assert added.status == 201, await added.text()
    assert (await added.json())["numbers"] == [OWNED]
    listed = await (await hub.get("/v1/tenants/alpha", headers=ops)).json()
    assert listed["numbers"] == [OWNED]

    taken = await hub.post("/v1/tenants/beta/numbers", json={"number": OWNED}, headers=ops)
    assert taken.status == 409
    error = await error_of(taken)
    assert error["code"] == "number_taken"
    assert "'alpha'" in error["message"]
    assert await db.fetchval("SELECT tenant FROM tenant_numbers WHERE number = $1", OWNED) == (
        "alpha"
    )
    assert (await (await hub.get("/v1/tenants/beta", headers=ops)).json())["numbers"] == []


async def test_a_number_neither_e164_nor_a_sender_id_is_a_422(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    assert (await hub.post("/v1/tenants", json={"name": "alpha"}, headers=ops)).status == 201

    answer = await hub.post("/v1/tenants/alpha/numbers", json={"number": "12ab!"}, headers=ops)

    assert answer.status == 422
    error = await error_of(answer)
    assert error["details"][0]["field"] == "number"
    assert await db.fetchval("SELECT count(*) FROM tenant_numbers") == 0


async def test_a_number_of_an_unknown_tenant_is_a_404(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    answer = await hub.post("/v1/tenants/nope/numbers", json={"number": OWNED}, headers=ops)

    assert answer.status == 404
    assert "'nope'" in (await error_of(answer))["message"]
    assert await db.fetchval("SELECT count(*) FROM tenant_numbers") == 0


async def test_a_number_is_removed_once(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    assert (await hub.post("/v1/tenants", json={"name": "alpha"}, headers=ops)).status == 201
    added = await hub.post("/v1/tenants/alpha/numbers", json={"number": OWNED}, headers=ops)
    assert added.status == 201

    removed = await hub.delete(f"/v1/tenants/alpha/numbers/{OWNED_IN_PATH}", headers=ops)
    again = await hub.delete(f"/v1/tenants/alpha/numbers/{OWNED_IN_PATH}", headers=ops)

    assert removed.status == 204, await removed.text()
    assert again.status == 404
    assert await db.fetchval("SELECT count(*) FROM tenant_numbers") == 0
    assert (await (await hub.get("/v1/tenants/alpha", headers=ops)).json())["numbers"] == []


# --- who may ------------------------------------------------------------------------------------


async def test_a_tenants_key_may_not_use_the_tenant_routes(
    hub: Client, db: asyncpg.Connection
) -> None:
    await create_tenant(db, "alpha")
    alpha = await tenant_key(db, "alpha", "admin")

    for method, path, body in (
        ("GET", "/v1/tenants", None),
        ("POST", "/v1/tenants", {"name": "gamma"}),
        ("GET", "/v1/tenants/alpha", None),
        ("PATCH", "/v1/tenants/alpha", {"send_burst": 1000}),
        ("POST", "/v1/tenants/alpha/numbers", {"number": OWNED}),
    ):
        answer = await hub.request(method, path, json=body, headers=alpha)
        assert answer.status == 403, f"{method} {path}"
        assert (await error_of(answer))["code"] == "operator_only", f"{method} {path}"
    assert await db.fetchval("SELECT count(*) FROM tenants WHERE name = 'gamma'") == 0
    assert await db.fetchval("SELECT send_burst FROM tenants WHERE name = 'alpha'") is None
    assert await db.fetchval("SELECT count(*) FROM tenant_numbers") == 0


async def test_a_disabled_tenants_keys_are_refused_until_it_is_enabled(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    await create_tenant(db, "alpha")
    alpha = await tenant_key(db, "alpha", "read")
    assert (await hub.get("/v1/messages", headers=alpha)).status == 200

    disabled = await hub.patch("/v1/tenants/alpha", json={"enabled": False}, headers=ops)
    assert disabled.status == 200
    for path in ("/v1/messages", "/v1/events"):
        answer = await hub.get(path, headers=alpha)
        assert answer.status == 403, path
        error = await error_of(answer)
        assert error["code"] == "tenant_disabled", path
        assert "'alpha'" in error["message"], path
    # The operator's key is no tenant's: it still works.
    assert (await hub.get("/v1/messages", headers=ops)).status == 200

    enabled = await hub.patch("/v1/tenants/alpha", json={"enabled": True}, headers=ops)
    assert enabled.status == 200
    for path in ("/v1/messages", "/v1/events"):
        assert (await hub.get(path, headers=alpha)).status == 200, path


async def test_a_tenant_sends_only_through_its_providers(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    created = await hub.post(
        "/v1/tenants", json={"name": "alpha", "providers": ["swift"]}, headers=ops
    )
    assert created.status == 201
    alpha = await tenant_key(db, "alpha", "send")

    refused = await hub.post(
        "/v1/messages",
        json={"provider": "carrierx", "to": [RECIPIENT], "body": "hello"},
        headers=alpha,
    )
    assert refused.status == 403, await refused.text()
    error = await error_of(refused)
    assert error["code"] == "provider_not_allowed"
    assert "carrierx" in error["message"]
    assert error["details"]["allowed"] == ["swift"]
    assert await db.fetchval("SELECT count(*) FROM messages") == 0

    sent = await hub.post(
        "/v1/messages",
        json={"provider": "swift", "to": [RECIPIENT], "body": "hello"},
        headers=alpha,
    )
    assert sent.status == 201, await sent.text()
    message = uuid.UUID((await sent.json())["id"])
    stored = await db.fetchrow("SELECT provider, tenant FROM messages WHERE id = $1", message)
    assert stored is not None
    assert (stored["provider"], stored["tenant"]) == ("swift", "alpha")


async def test_a_tenants_own_send_limits_apply_to_its_keys(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    created = await hub.post(
        "/v1/tenants", json={"name": "alpha", "daily_recipients": 1}, headers=ops
    )
    assert created.status == 201
    alpha = await tenant_key(db, "alpha", "send")

    two = await hub.post(
        "/v1/messages",
        json={"provider": "swift", "to": [RECIPIENT, "+447700900022"], "body": "hello"},
        headers=alpha,
    )

    assert two.status == 429, await two.text()
    assert (await error_of(two))["code"] == "quota_exceeded"
    one = await hub.post(
        "/v1/messages", json={"provider": "swift", "to": [RECIPIENT], "body": "hi"}, headers=alpha
    )
    assert one.status == 201, await one.text()


# --- what waits while a tenant is disabled ------------------------------------------------------


async def test_a_disabled_tenants_held_message_stays_held(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    await create_tenant(db, "alpha")
    alpha = await tenant_key(db, "alpha", "send")
    held = await hub.post(
        "/v1/messages",
        json={
            "provider": "telecom23",
            "to": [RECIPIENT],
            "from": "Shop",
            "body": "later",
            "send_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        },
        headers=alpha,
    )
    assert held.status == 201, await held.text()
    message = uuid.UUID((await held.json())["id"])
    assert await db.fetchval("SELECT dispatch_at IS NOT NULL FROM messages WHERE id = $1", message)

    disabled = await hub.patch("/v1/tenants/alpha", json={"enabled": False}, headers=ops)
    assert disabled.status == 200
    await db.execute(
        "UPDATE messages SET dispatch_at = now() - interval '1 minute' WHERE id = $1", message
    )

    assert await messages.claim_due(db, 10) == []
    assert await db.fetchval(
        "SELECT dispatch_at IS NOT NULL AND dispatched_at IS NULL FROM messages WHERE id = $1",
        message,
    )

    enabled = await hub.patch("/v1/tenants/alpha", json={"enabled": True}, headers=ops)
    assert enabled.status == 200
    assert [row["id"] for row in await messages.claim_due(db, 10)] == [message]
    assert await db.fetchval(
        "SELECT dispatch_at IS NULL AND dispatched_at IS NOT NULL FROM messages WHERE id = $1",
        message,
    )


async def test_a_disabled_tenants_subscription_keeps_its_deliveries(
    hub: Client, ops: dict[str, str], db: asyncpg.Connection
) -> None:
    await create_tenant(db, "alpha")
    alpha = await tenant_key(db, "alpha", "admin")
    created = await hub.post(
        "/v1/subscriptions", json={"url": "http://127.0.0.1:9/alpha"}, headers=alpha
    )
    assert created.status == 201, await created.text()
    subscription = uuid.UUID((await created.json())["id"])
    sent = await hub.post(
        "/v1/messages",
        json={"provider": "swift", "to": [RECIPIENT], "body": "hello"},
        headers=alpha,
    )
    assert sent.status == 201, await sent.text()
    queued = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE subscription_id = $1 AND status = 'pending'",
        subscription,
    )
    assert queued > 0

    disabled = await hub.patch("/v1/tenants/alpha", json={"enabled": False}, headers=ops)
    assert disabled.status == 200
    claimed = await outbox.claim_deliveries(db, 10, 4, 60.0)
    assert [c for c in claimed if c.subscription_id == subscription] == []
    still = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE subscription_id = $1 AND status = 'pending'",
        subscription,
    )
    assert still >= queued  # none taken (reports may have queued more meanwhile)

    enabled = await hub.patch("/v1/tenants/alpha", json={"enabled": True}, headers=ops)
    assert enabled.status == 200
    claimed = await outbox.claim_deliveries(db, 10, 4, 60.0)
    assert {c.subscription_id for c in claimed} == {subscription}
    assert (
        await db.fetchval("SELECT tenant FROM events WHERE id = $1", claimed[0].event_id) == "alpha"
    )
