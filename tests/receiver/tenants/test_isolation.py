"""Isolation: tenant A's key walks every route of the route table, and every page of the console,
with tenant B's ids, filters and cursors, and reaches nothing of B's: 404 (the same answer as an
object that does not exist), lists without B's rows, or 403 on the operator's routes. A route
or page added later without a case here fails the test: write its case."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.app import ROUTES, SANDBOX_ROUTES
from receiver.http.session import COOKIE
from receiver.storage.apikeys import create_key
from receiver.storage.tenants import add_number, create_tenant
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]

B_NUMBER = "+447700900011"  # delivered
B_REPLYING = "+447700900018"  # delivered, then replies YES
B_SENDER = "+447700900990"
A_NUMBER = "+447700900021"


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class World:
    """Two tenants' data, made through the API, and what A must not reach of B's."""

    hub: Client
    db: asyncpg.Connection
    a_key: str
    b_key: str
    operator_key: str
    b_message: str = ""
    b_held: str = ""
    b_provider_id: str = ""
    b_subscription: str = ""
    b_delivery: int = 0
    b_raw: str = ""
    b_send_body: dict[str, Any] = field(default_factory=dict)
    b_idempotency_key: str = "b-order-1"
    b_message_cursor: str = ""
    b_feed_cursor: str = ""
    b_inbound_cursor: str = ""
    b_event_ids: set[str] = field(default_factory=set)
    a_message: str = ""

    def a(self) -> dict[str, str]:
        return bearer(self.a_key)

    def b(self) -> dict[str, str]:
        return bearer(self.b_key)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, seconds: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def world(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> World:
    hub = await sandbox_hub(aiohttp_client, dsn, api_auth=True)
    for name in ("alpha", "beta"):
        await create_tenant(db, name)
    # B owns its number: a reply to it is B's even after A sends from it (the `send` case does).
    await add_number(db, "beta", B_SENDER)
    _, a_key = await create_key(db, "a-app", ["admin"], "alpha")
    _, b_key = await create_key(db, "b-app", ["admin"], "beta")
    _, operator_key = await create_key(db, "ops", ["admin"], None)
    world = World(hub, db, a_key, b_key, operator_key)

    # B: a webhook subscriber, a message whose reports and reply arrive, a held message.
    created = await hub.post(
        "/v1/subscriptions", json={"url": "http://127.0.0.1:9/b"}, headers=world.b()
    )
    assert created.status == 201, await created.text()
    world.b_subscription = (await created.json())["id"]
    world.b_send_body = {
        "provider": "carrierx",
        "to": [B_NUMBER, B_REPLYING],
        "from": B_SENDER,
        "body": "B's secret text",
        "ref": "b-ref",
    }
    sent = await hub.post(
        "/v1/messages",
        json=world.b_send_body,
        headers=world.b() | {"Idempotency-Key": world.b_idempotency_key},
    )
    assert sent.status == 201, await sent.text()
    answer = await sent.json()
    world.b_message = answer["id"]
    world.b_provider_id = answer["recipients"][0]["provider_message_id"]
    held = await hub.post(
        "/v1/messages",
        json={
            "provider": "telecom23",
            "to": [B_NUMBER],
            "from": "BShop",
            "body": "later",
            "send_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        },
        headers=world.b(),
    )
    assert held.status == 201, await held.text()
    world.b_held = (await held.json())["id"]

    async def replied() -> bool:
        page = await (await hub.get("/v1/inbound", headers=world.b())).json()
        return bool(page["data"])

    await eventually(replied, "B's reply attributed to B")
    # A: a message of its own, so that its lists are not empty by accident.
    mine = await hub.post(
        "/v1/messages",
        json={"provider": "swift", "to": [A_NUMBER], "body": "A's text", "ref": "a-ref"},
        headers=world.a(),
    )
    assert mine.status == 201, await mine.text()
    world.a_message = (await mine.json())["id"]

    world.b_delivery = await db.fetchval(
        "SELECT min(id) FROM deliveries WHERE subscription_id = $1", uuid.UUID(world.b_subscription)
    )
    assert world.b_delivery is not None
    world.b_raw = str(
        await db.fetchval(
            "SELECT e.raw_id FROM events e JOIN raw_callbacks c ON c.id = e.raw_id"
            " WHERE e.message_id = $1 AND c.source = 'callback' LIMIT 1",
            uuid.UUID(world.b_message),
        )
    )
    world.b_event_ids = {
        row["id"] for row in await db.fetch("SELECT id FROM events WHERE tenant = 'beta'")
    }
    listed = await (await hub.get("/v1/messages?limit=1", headers=world.b())).json()
    world.b_message_cursor = listed["next_cursor"]
    feed = await (await hub.get("/v1/events?limit=2", headers=world.b())).json()
    world.b_feed_cursor = feed["next_cursor"]
    inbound = await (await hub.get("/v1/inbound?limit=1", headers=world.b())).json()
    world.b_inbound_cursor = inbound["next_cursor"] or ""
    return world


async def not_found_like_nothing(answer: Any, nothing: Any) -> None:
    """A's answer about B's object is the answer about an object that does not exist."""
    assert answer.status == 404, await answer.text()
    assert await answer.json() == await nothing.json()


Case = Callable[[World], Awaitable[None]]


async def b_opt_out(world: World) -> int:
    """An entry on B's list (B_NUMBER may not be sent to from B_SENDER)."""
    made = await world.hub.post(
        "/v1/opt-outs", json={"number": B_NUMBER, "sender": B_SENDER}, headers=world.b()
    )
    assert made.status == 201, await made.text()
    entry: int = (await made.json())["id"]
    return entry


async def list_opt_outs(world: World) -> None:
    await b_opt_out(world)
    for query in ("", f"?number={quote(B_NUMBER)}"):
        mine = await (await world.hub.get(f"/v1/opt-outs{query}", headers=world.a())).json()
        assert mine["data"] == [], mine
    theirs = await (await world.hub.get("/v1/opt-outs", headers=world.b())).json()
    assert [e["number"] for e in theirs["data"]] == [B_NUMBER]


async def add_opt_out(world: World) -> None:
    # A's entry for the same handset is A's alone: B's sends to it are not touched.
    made = await world.hub.post("/v1/opt-outs", json={"number": B_NUMBER}, headers=world.a())
    assert made.status == 201, await made.text()
    assert (await made.json())["tenant"] == "alpha"
    as_b = await world.hub.post(
        "/v1/opt-outs", json={"number": B_NUMBER, "tenant": "beta"}, headers=world.a()
    )
    assert as_b.status == 403
    theirs = await (await world.hub.get("/v1/opt-outs", headers=world.b())).json()
    assert all(e["tenant"] == "beta" for e in theirs["data"])


async def remove_opt_out(world: World) -> None:
    entry = await b_opt_out(world)
    answer = await world.hub.delete(f"/v1/opt-outs/{entry}", headers=world.a())
    nothing = await world.hub.delete("/v1/opt-outs/999999999", headers=world.a())
    await not_found_like_nothing(answer, nothing)
    assert await world.db.fetchval("SELECT count(*) FROM opt_outs WHERE id = $1", entry) == 1


async def send(world: World) -> None:
    # B's Idempotency-Key and body: A starts a message of its own, never reads B's answer.
    answer = await world.hub.post(
        "/v1/messages",
        json=world.b_send_body,
        headers=world.a() | {"Idempotency-Key": world.b_idempotency_key},
    )
    assert answer.status == 201, await answer.text()
    assert (await answer.json())["id"] != world.b_message
    as_b = await world.hub.post(
        "/v1/messages", json=world.b_send_body | {"tenant": "beta"}, headers=world.a()
    )
    assert as_b.status == 403


async def cancel_by_delete(world: World) -> None:
    answer = await world.hub.delete(f"/v1/messages/{world.b_held}", headers=world.a())
    nothing = await world.hub.delete(f"/v1/messages/{uuid.uuid4()}", headers=world.a())
    await not_found_like_nothing(answer, nothing)
    still = await world.db.fetchval(
        "SELECT dispatch_at IS NOT NULL FROM messages WHERE id = $1", uuid.UUID(world.b_held)
    )
    assert still is True


async def cancel_by_post(world: World) -> None:
    answer = await world.hub.post(f"/v1/messages/{world.b_held}/cancel", headers=world.a())
    nothing = await world.hub.post(f"/v1/messages/{uuid.uuid4()}/cancel", headers=world.a())
    await not_found_like_nothing(answer, nothing)


async def a_list(world: World, path: str) -> list[dict[str, Any]]:
    answer = await world.hub.get(path, headers=world.a())
    assert answer.status == 200, f"{path}: {await answer.text()}"
    data: list[dict[str, Any]] = (await answer.json())["data"]
    return data


async def list_messages(world: World) -> None:
    mine = await a_list(world, "/v1/messages")
    assert world.a_message in {m["id"] for m in mine}
    assert {m["tenant"] for m in mine} == {"alpha"}
    for query in (
        "ref=b-ref",
        "tenant=beta",
        f"to={B_NUMBER.replace('+', '%2B')}",
        f"cursor={world.b_message_cursor}",
        "provider=carrierx",
        "status=delivered",
    ):
        rows = await a_list(world, f"/v1/messages?{query}")
        assert all(m["tenant"] == "alpha" for m in rows), query
        assert world.b_message not in {m["id"] for m in rows}, query


async def get_message(world: World) -> None:
    answer = await world.hub.get(f"/v1/messages/{world.b_message}", headers=world.a())
    nothing = await world.hub.get(f"/v1/messages/{uuid.uuid4()}", headers=world.a())
    await not_found_like_nothing(answer, nothing)


async def by_provider_id(world: World) -> None:
    answer = await world.hub.get(
        f"/v1/messages/by-provider-id/carrierx/{world.b_provider_id}", headers=world.a()
    )
    assert answer.status == 404
    body = await answer.json()
    assert body["error"]["message"] == f"nothing known of carrierx id {world.b_provider_id!r}"


async def inbound(world: World) -> None:
    assert await a_list(world, "/v1/inbound") == []
    for query in (f"from={B_REPLYING.replace('+', '%2B')}", f"cursor={world.b_inbound_cursor}"):
        assert await a_list(world, f"/v1/inbound?{query}") == [], query


async def events(world: World) -> None:
    for query in ("", f"after={world.b_feed_cursor}", "type=message.inbound", "provider=carrierx"):
        rows = await a_list(world, f"/v1/events?limit=500&{query}")
        assert {e["tenant"] for e in rows} <= {"alpha"}, query
        assert not {e["id"] for e in rows} & world.b_event_ids, query
    assert await a_list(world, "/v1/events?limit=500"), "A's own events are in its feed"


async def stream(world: World) -> None:
    seen: list[dict[str, Any]] = []
    async with world.hub.get("/v1/events/stream?after=0.0", headers=world.a()) as answer:
        assert answer.status == 200

        async def read() -> None:
            async for line in answer.content:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:]))

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(read(), timeout=1.5)
    assert seen, "A's own events are in its stream"
    assert {e["tenant"] for e in seen} == {"alpha"}
    assert not {e["id"] for e in seen} & world.b_event_ids


async def create_subscription(world: World) -> None:
    answer = await world.hub.post(
        "/v1/subscriptions", json={"url": "http://127.0.0.1:9/a"}, headers=world.a()
    )
    assert answer.status == 201
    assert (await answer.json())["tenant"] == "alpha"


async def list_subscriptions(world: World) -> None:
    ids = {s["id"] for s in await a_list(world, "/v1/subscriptions")}
    assert world.b_subscription not in ids


def subscription_case(method: str, suffix: str = "", body: Any = None) -> Case:
    async def case(world: World) -> None:
        answer = await world.hub.request(
            method,
            f"/v1/subscriptions/{world.b_subscription}{suffix}",
            json=body,
            headers=world.a(),
        )
        nothing = await world.hub.request(
            method, f"/v1/subscriptions/{uuid.uuid4()}{suffix}", json=body, headers=world.a()
        )
        await not_found_like_nothing(answer, nothing)
        # B's subscription is as it was.
        row = await world.db.fetchrow(
            "SELECT enabled, previous_secret FROM subscriptions WHERE id = $1",
            uuid.UUID(world.b_subscription),
        )
        assert row is not None
        assert (row["enabled"], row["previous_secret"]) == (True, None)

    return case


async def retry_delivery(world: World) -> None:
    await world.db.execute(
        "UPDATE deliveries SET status = 'failed' WHERE id = $1", world.b_delivery
    )
    answer = await world.hub.post(f"/v1/deliveries/{world.b_delivery}/retry", headers=world.a())
    nothing = await world.hub.post("/v1/deliveries/999999999/retry", headers=world.a())
    await not_found_like_nothing(answer, nothing)
    status = await world.db.fetchval(
        "SELECT status FROM deliveries WHERE id = $1", world.b_delivery
    )
    assert status == "failed"


def operator_only(method: str, path: Callable[[World], str], body: Any = None) -> Case:
    async def case(world: World) -> None:
        answer = await world.hub.request(method, path(world), json=body, headers=world.a())
        assert answer.status == 403, await answer.text()
        assert (await answer.json())["error"]["code"] == "operator_only"

    return case


async def raw_callback(world: World) -> None:
    answer = await world.hub.get(f"/v1/raw-callbacks/{world.b_raw}", headers=world.a())
    nothing = await world.hub.get(f"/v1/raw-callbacks/{uuid.uuid4()}", headers=world.a())
    await not_found_like_nothing(answer, nothing)
    mine = await world.hub.get(f"/v1/raw-callbacks/{world.b_raw}", headers=world.b())
    assert mine.status == 200, "B sees the raw callback behind its own events"


async def stats(world: World) -> None:
    answer = await world.hub.get("/v1/stats", headers=world.a())
    assert answer.status == 200
    figures = await answer.json()
    mine = await world.db.fetchval("SELECT count(*) FROM messages WHERE tenant = 'alpha'")
    everyone = await world.db.fetchval("SELECT count(*) FROM messages")
    assert sum(p["messages"] for p in figures["providers"].values()) == mine < everyone
    assert all(p["unparsed_callbacks"] == 0 for p in figures["providers"].values())


CASES: dict[tuple[str, str], Case] = {
    ("post", "/v1/messages"): send,
    ("delete", "/v1/messages/{id}"): cancel_by_delete,
    ("post", "/v1/messages/{id}/cancel"): cancel_by_post,
    ("get", "/v1/messages"): list_messages,
    ("get", "/v1/messages/{id}"): get_message,
    ("get", "/v1/messages/by-provider-id/{provider}/{provider_message_id}"): by_provider_id,
    ("get", "/v1/inbound"): inbound,
    ("get", "/v1/events"): events,
    ("get", "/v1/events/stream"): stream,
    ("post", "/v1/subscriptions"): create_subscription,
    ("get", "/v1/subscriptions"): list_subscriptions,
    ("get", "/v1/subscriptions/{id}"): subscription_case("GET"),
    ("patch", "/v1/subscriptions/{id}"): subscription_case("PATCH", body={"enabled": False}),
    ("delete", "/v1/subscriptions/{id}"): subscription_case("DELETE"),
    ("post", "/v1/subscriptions/{id}/rotate-secret"): subscription_case("POST", "/rotate-secret"),
    ("post", "/v1/subscriptions/{id}/replay"): subscription_case(
        "POST", "/replay", {"since": "2026-01-01T00:00:00Z"}
    ),
    ("post", "/v1/deliveries/{id}/retry"): retry_delivery,
    ("get", "/v1/raw-callbacks"): operator_only("GET", lambda w: "/v1/raw-callbacks"),
    ("get", "/v1/raw-callbacks/{id}"): raw_callback,
    ("post", "/v1/raw-callbacks/{id}/reprocess"): operator_only(
        "POST", lambda w: f"/v1/raw-callbacks/{w.b_raw}/reprocess"
    ),
    ("get", "/v1/callback-refusals"): operator_only("GET", lambda w: "/v1/callback-refusals"),
    ("get", "/v1/stats"): stats,
    ("get", "/v1/opt-outs"): list_opt_outs,
    ("post", "/v1/opt-outs"): add_opt_out,
    ("delete", "/v1/opt-outs/{id}"): remove_opt_out,
    ("get", "/v1/routes"): operator_only("GET", lambda w: "/v1/routes"),
    ("post", "/v1/routes"): operator_only(
        "POST", lambda w: "/v1/routes", {"name": "uk", "providers": ["swift"]}
    ),
    ("get", "/v1/routes/{name}"): operator_only("GET", lambda w: "/v1/routes/uk"),
    ("put", "/v1/routes/{name}"): operator_only(
        "PUT", lambda w: "/v1/routes/uk", {"providers": ["swift"]}
    ),
    ("delete", "/v1/routes/{name}"): operator_only("DELETE", lambda w: "/v1/routes/uk"),
    ("get", "/v1/route-changes"): operator_only("GET", lambda w: "/v1/route-changes"),
    ("get", "/v1/correction-runs"): operator_only("GET", lambda w: "/v1/correction-runs"),
    ("post", "/v1/correction-runs"): operator_only(
        "POST", lambda w: "/v1/correction-runs", {"mode": "apply"}
    ),
    ("get", "/v1/correction-runs/{id}"): operator_only(
        "GET", lambda w: f"/v1/correction-runs/{uuid.uuid4()}"
    ),
    ("post", "/v1/correction-runs/{id}/apply"): operator_only(
        "POST", lambda w: f"/v1/correction-runs/{uuid.uuid4()}/apply"
    ),
    ("post", "/v1/correction-runs/{id}/stop"): operator_only(
        "POST", lambda w: f"/v1/correction-runs/{uuid.uuid4()}/stop"
    ),
    ("get", "/v1/sandbox/providers"): operator_only("GET", lambda w: "/v1/sandbox/providers"),
    ("get", "/v1/sandbox/sent"): operator_only("GET", lambda w: "/v1/sandbox/sent"),
    ("post", "/v1/sandbox/providers/{name}/inbound"): operator_only(
        "POST",
        lambda w: "/v1/sandbox/providers/swift/inbound",
        {"handset": B_NUMBER, "to": B_SENDER, "text": "STOP"},
    ),
    ("put", "/v1/sandbox/providers/{name}"): operator_only(
        "PUT", lambda w: "/v1/sandbox/providers/swift", {"mode": "down"}
    ),
    ("get", "/v1/tenants"): operator_only("GET", lambda w: "/v1/tenants"),
    ("post", "/v1/tenants"): operator_only("POST", lambda w: "/v1/tenants", {"name": "gamma"}),
    ("get", "/v1/tenants/{name}"): operator_only("GET", lambda w: "/v1/tenants/beta"),
    ("patch", "/v1/tenants/{name}"): operator_only(
        "PATCH", lambda w: "/v1/tenants/beta", {"enabled": False}
    ),
    ("post", "/v1/tenants/{name}/numbers"): operator_only(
        "POST", lambda w: "/v1/tenants/alpha/numbers", {"number": B_SENDER}
    ),
    ("delete", "/v1/tenants/{name}/numbers/{number}"): operator_only(
        "DELETE", lambda w: "/v1/tenants/beta/numbers/%2B447700900990"
    ),
}


def test_every_route_behind_keys_has_an_isolation_case() -> None:
    every_route = ROUTES + SANDBOX_ROUTES  # the hub of these tests runs in sandbox mode
    behind_keys = {(route.method, route.path) for route in every_route if route.scope is not None}
    missing = sorted(behind_keys - CASES.keys())
    assert not missing, f"routes without a tenant isolation case (add one): {missing}"
    assert not CASES.keys() - behind_keys, "cases of routes that no longer exist"


async def test_a_tenants_key_reaches_nothing_of_another_tenant_on_any_route(
    world: World,
) -> None:
    for (method, path), case in CASES.items():
        try:
            await case(world)
        except AssertionError as failure:
            raise AssertionError(f"{method.upper()} {path}: {failure}") from failure
    # B still sees its own, and the operator sees both.
    theirs = await (await world.hub.get("/v1/messages", headers=world.b())).json()
    assert world.b_message in {m["id"] for m in theirs["data"]}
    everything = await world.hub.get("/v1/messages?limit=500", headers=bearer(world.operator_key))
    tenants = {m["tenant"] for m in (await everything.json())["data"]}
    assert tenants == {"alpha", "beta"}


# --- the console --------------------------------------------------------------------------------


def console(world: World, secret: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={secret}"}


async def page(world: World, path: str, secret: str | None = None) -> tuple[int, str]:
    answer = await world.hub.get(
        path, headers=console(world, secret or world.a_key), allow_redirects=False
    )
    return answer.status, await answer.text()


async def console_messages(world: World) -> None:
    for query in ("", "?tenant=beta", f"?cursor={world.b_message_cursor}", "?ref=b-ref"):
        status, html = await page(world, f"/console{query}")
        assert status == 200, query
        assert world.b_message not in html, query
        assert "B&#39;s secret text" not in html, query
    status, html = await page(world, "/console")
    assert world.a_message in html
    status, html = await page(world, "/console", world.operator_key)
    assert world.b_message in html
    assert world.a_message in html
    assert 'class="tenant">beta' in html  # the operator's tenant column


async def console_message(world: World) -> None:
    status, html = await page(world, f"/console/messages/{world.b_message}")
    assert status == 404
    assert "B&#39;s secret text" not in html
    assert B_NUMBER not in html


async def console_find(world: World) -> None:
    status, _ = await page(
        world, f"/console/find?provider=carrierx&provider_message_id={world.b_provider_id}"
    )
    assert status == 404


async def console_operator_page(world: World, path: str) -> None:
    status, html = await page(world, path)
    assert status == 403
    assert "operator" in html


async def console_subscriptions(world: World) -> None:
    status, html = await page(world, "/console/subscriptions")
    assert status == 200
    assert world.b_subscription not in html


async def console_providers(world: World) -> None:
    status, html = await page(world, "/console/providers")
    assert status == 200
    # B sent through carrierx; A's figures know nothing of it.
    row = html[html.index('id="provider-carrierx"') :]
    assert "<small>0 recipients</small>" in row[: row.index("</tr>")]
    assert "unparsed" not in html  # nobody's callbacks: the operator's page
    assert "live split" not in html  # routing spans every tenant's traffic


async def console_opt_outs(world: World) -> None:
    await b_opt_out(world)
    for query in ("", f"?number={quote(B_NUMBER)}"):
        status, html = await page(world, f"/console/opt-outs{query}")
        assert status == 200
        assert f'<th scope="row">{B_NUMBER}</th>' not in html
        assert "No one on the list" in html


async def console_raw(world: World) -> None:
    status, _ = await page(world, f"/console/raw-callbacks/{world.b_raw}")
    assert status == 404


CONSOLE_CASES: dict[str, Case] = {
    "/console": console_messages,
    "/console/messages/{id}": console_message,
    "/console/find": console_find,
    "/console/callbacks": lambda w: console_operator_page(w, "/console/callbacks"),
    "/console/tenants": lambda w: console_operator_page(w, "/console/tenants"),
    "/console/routes": lambda w: console_operator_page(w, "/console/routes"),
    "/console/corrections": lambda w: console_operator_page(w, "/console/corrections"),
    "/console/opt-outs": console_opt_outs,
    "/console/subscriptions": console_subscriptions,
    "/console/providers": console_providers,
    "/console/raw-callbacks/{id}": console_raw,
}
# Pages that show no tenant's data.
CONSOLE_WITHOUT_DATA = {"/", "/console/login", "/console/logout"}


async def test_every_console_page_shows_a_tenant_only_its_own(world: World) -> None:
    pages = {
        resource.canonical
        for resource in world.hub.app.router.resources()
        if resource.canonical == "/" or resource.canonical.startswith("/console")
    }
    pages = {p for p in pages if not p.startswith("/console/static")}
    missing = sorted(pages - CONSOLE_CASES.keys() - CONSOLE_WITHOUT_DATA)
    assert not missing, f"console pages without a tenant isolation case (add one): {missing}"
    for path, case in CONSOLE_CASES.items():
        try:
            await case(world)
        except AssertionError as failure:
            raise AssertionError(f"{path}: {failure}") from failure
