"""Routing at send time against the simulated providers: the first matching route decides,
recipients a provider refuses for a reason that is not about the message go on to the next
provider in the same call (attempt 2, the first refusal on the timeline), and nothing is sent
twice: the simulated providers' own counts show it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from normalizers.events import Event, EventType, Status, event_id
from receiver.config import ProviderSettings
from receiver.context import AppContext
from receiver.demo import run_failover_demo
from receiver.sandbox.common import SANDBOX_KEY, Sandbox
from receiver.sending.redelivery import Redeliveries
from receiver.sending.scheduler import Scheduler
from receiver.storage import messages
from receiver.storage.callbacks import store_events_alone
from tests.helpers import free_port, sandbox_hub

Client = TestClient[Any, Any]

SWIFT_THEN_CARRIERX = {
    "name": "uk",
    "match": {"country": ["GB"]},
    "providers": ["swift", "carrierx"],
}


async def hub_with(
    aiohttp_client: Any, dsn: str, *routes: Mapping[str, Any], **settings: Any
) -> Client:
    # One try per call: a provider that is down fails over at once (no backoff to wait for).
    hub = await sandbox_hub(aiohttp_client, dsn, **({"send_attempts": 1} | settings))
    for route in routes:
        made = await hub.post("/v1/routes", json=route)
        assert made.status == 201, await made.json()
    return hub


def sandbox(hub: Client) -> Sandbox:
    state: Sandbox = hub.app[SANDBOX_KEY]
    return state


def taken(hub: Client, provider: str) -> int:
    return sum(n for (name, _), n in sandbox(hub).sent.items() if name == provider)


async def send(hub: Client, to: str = "+447700900001", **fields: Any) -> tuple[int, dict[str, Any]]:
    answer = await hub.post(
        "/v1/messages", json={"to": [to], "from": "+447700900999", "body": "hi"} | fields
    )
    return answer.status, await answer.json()


async def break_provider(hub: Client, name: str, **trouble: Any) -> None:
    answer = await hub.put(f"/v1/sandbox/providers/{name}", json=trouble)
    assert answer.status == 200, await answer.json()


async def test_a_message_naming_no_provider_goes_through_the_first_matching_route(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(
        aiohttp_client,
        dsn,
        {"name": "us", "match": {"country": ["US"]}, "providers": ["carrierx"]},
        SWIFT_THEN_CARRIERX,
    )

    status, sent = await send(hub)

    assert status == 201, sent
    [recipient] = sent["recipients"]
    assert (recipient["provider"], recipient["attempt"], recipient["status"]) == (
        "swift",
        1,
        "accepted",
    )
    assert (taken(hub, "swift"), taken(hub, "carrierx")) == (1, 0)
    view = await (await hub.get(f"/v1/messages/{sent['id']}")).json()
    [decision] = view["routing"]
    assert decision["route"] == "uk"
    assert decision["providers"] == ["swift", "carrierx"]
    assert decision["why"] == "route uk: priority: swift first"
    assert decision["to"] == ["+447700900001"]
    assert view["recipients"][0]["provider"] == "swift"


async def test_a_provider_that_is_down_fails_over_to_the_next_in_the_same_call(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, SWIFT_THEN_CARRIERX)
    await break_provider(hub, "swift", mode="down")

    status, sent = await send(hub)

    assert status == 201, sent
    [recipient] = sent["recipients"]
    assert (recipient["provider"], recipient["attempt"], recipient["final"]) == (
        "carrierx",
        2,
        False,
    )
    first, second = recipient["attempts"]
    assert (first["attempt"], first["provider"], first["error_code"]) == (
        1,
        "swift",
        "outcome_unknown",
    )
    assert (second["attempt"], second["provider"]) == (2, "carrierx")
    assert (taken(hub, "swift"), taken(hub, "carrierx")) == (0, 1)
    view = await (await hub.get(f"/v1/messages/{sent['id']}")).json()
    timeline = [
        (e["attempt"], e["provider"], e["status"], e["recipient_status"]) for e in view["events"]
    ]
    # The first refusal is on the timeline as attempt 1's, and never ended the recipient.
    by_sequence = sorted(view["events"], key=lambda e: e["sequence"])
    assert timeline.count((1, "swift", "unknown", "unknown")) == 1
    assert [e["attempt"] for e in by_sequence] == [1, 2]
    assert [e["sequence"] for e in by_sequence] == [1, 2]


async def test_a_provider_throttled_past_the_budget_fails_over(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, SWIFT_THEN_CARRIERX, send_retry_budget_s=0.2)
    await break_provider(hub, "swift", mode="throttled")

    status, sent = await send(hub)

    assert status == 201, sent
    [recipient] = sent["recipients"]
    assert [a["error_code"] for a in recipient["attempts"]] == ["rate_limited", None]
    assert recipient["provider"] == "carrierx"


async def test_refused_credentials_fail_over(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, SWIFT_THEN_CARRIERX)

    status, sent = await send(hub, body="ERROR:unauthorized")  # swift answers 401

    assert status == 201, sent
    assert sent["recipients"][0]["provider"] == "carrierx"
    assert (taken(hub, "swift"), taken(hub, "carrierx")) == (0, 1)


async def test_out_of_credit_fails_over(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(
        aiohttp_client,
        dsn,
        {"name": "uk", "providers": ["telecom23", "carrierx"]},
    )

    status, sent = await send(hub, body="ERROR:INSUFFICIENT_BALANCE", **{"from": "MyApp"})

    assert status == 201, sent
    [recipient] = sent["recipients"]
    assert [a["provider"] for a in recipient["attempts"]] == ["telecom23", "carrierx"]
    assert recipient["attempts"][0]["error_code"] == "INSUFFICIENT_BALANCE"


async def test_a_refusal_about_the_message_is_not_failed_over(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(
        aiohttp_client, dsn, {"name": "uk", "providers": ["properties", "carrierx"]}
    )

    # The simulated Properties API refuses numbers ending in 4: a bad destination.
    status, answer = await send(hub, to="+447700900004")

    assert status == 502, answer
    [recipient] = answer["error"]["details"]["message"]["recipients"]
    assert [a["provider"] for a in recipient["attempts"]] == ["properties"]
    assert taken(hub, "carrierx") == 0


async def test_a_timeout_after_sending_fails_over_only_when_the_route_says_so(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    careful = {
        "name": "careful",
        "match": {"prefix": ["+4477009000"]},
        "providers": ["telecom23", "carrierx"],
    }
    bold = {
        "name": "bold",
        "match": {"prefix": ["+4477009001"]},
        "providers": ["telecom23", "carrierx"],
        "failover_on_timeout": True,
    }
    hub = await hub_with(aiohttp_client, dsn, careful, bold, send_timeout_s=0.5)

    kept_status, kept = await send(hub, to="+447700900001", body="ERROR:SLOW", **{"from": "MyApp"})
    moved_status, moved = await send(
        hub, to="+447700900101", body="ERROR:SLOW", **{"from": "MyApp"}
    )

    # Telecom23 may have sent it: sending again could deliver it twice.
    assert kept_status == 502
    assert kept["error"]["code"] == "provider_outcome_unknown"
    [unmoved] = kept["error"]["details"]["message"]["recipients"]
    assert [a["provider"] for a in unmoved["attempts"]] == ["telecom23"]
    assert moved_status == 201, moved
    assert [a["provider"] for a in moved["recipients"][0]["attempts"]] == ["telecom23", "carrierx"]


async def test_every_provider_refusing_is_a_502_with_each_attempt(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, SWIFT_THEN_CARRIERX)
    await break_provider(hub, "swift", mode="down")
    await break_provider(hub, "carrierx", mode="down")

    status, answer = await send(hub)

    assert status == 502
    [recipient] = answer["error"]["details"]["message"]["recipients"]
    assert [a["provider"] for a in recipient["attempts"]] == ["swift", "carrierx"]
    assert recipient["provider"] == "carrierx"


async def test_a_provider_down_for_one_country_only_fails_that_country_over(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, {"name": "any", "providers": ["swift", "carrierx"]})
    await break_provider(hub, "swift", mode="down", country="US")

    _, uk = await send(hub, to="+447700900001")
    _, us = await send(hub, to="+12015550101")

    assert uk["recipients"][0]["provider"] == "swift"
    assert us["recipients"][0]["provider"] == "carrierx"


async def test_weights_split_the_first_choices_exactly(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(
        aiohttp_client,
        dsn,
        {
            "name": "split",
            "providers": ["swift", "carrierx"],
            "choose": "weighted",
            "weights": {"swift": 70, "carrierx": 30},
        },
    )

    firsts = [
        (await send(hub, to=f"+4477009000{n:02d}"))[1]["recipients"][0]["provider"]
        for n in (11, 21, 31, 41, 51, 61, 71, 81, 91, 10)
    ]

    assert (firsts.count("swift"), firsts.count("carrierx")) == (7, 3)


async def test_cheapest_takes_the_lowest_price_for_the_country(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(
        aiohttp_client,
        dsn,
        {
            "name": "cheap",
            "providers": ["swift", "carrierx"],
            "choose": "cheapest",
            "prices": {"swift": {"GB": 0.05, "*": 0.01}, "carrierx": {"*": 0.03}},
        },
    )

    _, uk = await send(hub, to="+447700900001")
    _, us = await send(hub, to="+12015550101")

    assert uk["recipients"][0]["provider"] == "carrierx"
    assert us["recipients"][0]["provider"] == "swift"
    view = await (await hub.get(f"/v1/messages/{uk['id']}")).json()
    assert view["routing"][0]["why"] == "route cheap: cheapest for GB: carrierx at 0.03"


async def test_a_route_for_one_tenant_leaves_the_others_to_theirs(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO tenants (name) VALUES ('shop')")
    hub = await hub_with(
        aiohttp_client,
        dsn,
        {"name": "shop", "match": {"tenant": ["shop"]}, "providers": ["carrierx"]},
        {"name": "rest", "providers": ["swift"]},
    )

    _, shop = await send(hub, tenant="shop")
    _, other = await send(hub)

    assert shop["recipients"][0]["provider"] == "carrierx"
    assert other["recipients"][0]["provider"] == "swift"


async def test_a_tenant_limited_to_some_providers_is_routed_among_them(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO tenants (name, providers) VALUES ('shop', '{carrierx}')")
    hub = await hub_with(aiohttp_client, dsn, SWIFT_THEN_CARRIERX)

    _, shop = await send(hub, tenant="shop")

    assert shop["recipients"][0]["provider"] == "carrierx"
    assert taken(hub, "swift") == 0


async def test_no_route_and_no_provider_is_a_409_saying_so(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(
        aiohttp_client, dsn, {"name": "us", "match": {"country": ["US"]}, "providers": ["carrierx"]}
    )

    status, answer = await send(hub)

    assert status == 409  # the routes as they stand: the same send succeeds once one matches
    assert answer["error"]["code"] == "no_route"
    assert answer["error"]["details"][0]["field"] == "to.0"


async def test_a_late_delivery_of_a_superseded_attempt_makes_the_recipient_delivered(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn)
    # Swift never reports numbers ending in 7: attempt 1 stays open, then is superseded.
    status, sent = await send(hub, to="+447700900007", provider="swift")
    assert status == 201
    swift_id = sent["recipients"][0]["provider_message_id"]
    message_id = uuid.UUID(sent["id"])
    moved = await messages.fail_over(
        db, message_id, ["+447700900007"], "carrierx", datetime.now(UTC)
    )
    assert moved == ["+447700900007"]
    before = await db.fetchrow(
        "SELECT sequence, status FROM message_recipients WHERE message_id = $1 AND NOT superseded",
        message_id,
    )
    assert before is not None

    now = datetime.now(UTC)
    late = Event(
        id=event_id("swift", "test-late", swift_id),
        type=EventType.STATUS,
        provider="swift",
        status=Status.DELIVERED,
        provider_status="DELIVERED",
        occurred_at=now,
        received_at=now,
        occurred_at_source="received",
        provider_message_id=swift_id,
        recipient="+447700900007",
    )
    result = await store_events_alone(db, [late])

    [stored] = result.new_events
    assert (stored.recipient_status, stored.sequence) == ("delivered", before["sequence"] + 1)
    row = await db.fetchrow(
        "SELECT provider, status, final, attempt FROM message_recipients"
        " WHERE message_id = $1 AND NOT superseded",
        message_id,
    )
    assert row is not None
    assert dict(row) == {"provider": "carrierx", "status": "delivered", "final": True, "attempt": 2}
    assert await db.fetchval("SELECT attempt FROM events WHERE id = $1", late.id) == 1


REDELIVERING = SWIFT_THEN_CARRIERX | {
    "redeliver": {"on": ["undelivered", "expired"], "within_s": 600, "max_attempts": 2}
}


async def report(
    db: asyncpg.Connection,
    provider: str,
    provider_id: str,
    number: str,
    status: Status,
    kind: Any = "temporary",
    synthetic: bool = False,
) -> None:
    now = datetime.now(UTC)
    event = Event(
        id=event_id(provider, "test", provider_id, str(status)),
        type=EventType.STATUS,
        provider=provider,
        status=status,
        provider_status=str(status),
        occurred_at=now,
        received_at=now,
        occurred_at_source="received",
        provider_message_id=provider_id,
        recipient=number,
        failure_kind=kind,
        synthetic=synthetic,
    )
    await store_events_alone(db, [event])


async def silent_send(hub: Client) -> tuple[str, str]:
    # Swift never reports numbers ending in 7: the test reports for it.
    status, sent = await send(hub, to="+447700900007")
    assert status == 201, sent
    return sent["id"], sent["recipients"][0]["provider_message_id"]


async def test_an_undelivered_recipient_goes_once_to_the_next_provider(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, REDELIVERING)
    message_id, swift_id = await silent_send(hub)
    await report(db, "swift", swift_id, "+447700900007", Status.UNDELIVERED)
    redeliveries = Redeliveries(hub.app[AppContext.KEY])

    assert await redeliveries.tick() == 1
    assert await redeliveries.tick() == 0

    view = await (await hub.get(f"/v1/messages/{message_id}")).json()
    [recipient] = view["recipients"]
    assert (recipient["provider"], recipient["attempt"]) == ("carrierx", 2)
    assert next((a["provider"], a["status"]) for a in recipient["attempts"]) == (
        "swift",
        "undelivered",
    )
    assert (taken(hub, "swift"), taken(hub, "carrierx")) == (1, 1)
    assert {e["attempt"] for e in view["events"]} == {1, 2}


async def test_the_hubs_own_expiry_is_redelivered_too(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, REDELIVERING)
    _message_id, swift_id = await silent_send(hub)
    await report(db, "swift", swift_id, "+447700900007", Status.EXPIRED, synthetic=True)

    assert await Redeliveries(hub.app[AppContext.KEY]).tick() == 1
    assert taken(hub, "carrierx") == 1


async def test_a_permanent_failure_or_a_route_without_redeliver_is_not_sent_again(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, REDELIVERING)
    _message_id, swift_id = await silent_send(hub)
    await report(db, "swift", swift_id, "+447700900007", Status.UNDELIVERED, kind="permanent")
    await hub.put("/v1/routes/uk", json={"providers": ["swift", "carrierx"]})
    _other, other_id = await silent_send(hub)
    await report(db, "swift", other_id, "+447700900007", Status.UNDELIVERED)

    assert await Redeliveries(hub.app[AppContext.KEY]).tick() == 1  # looked at, closed
    assert taken(hub, "carrierx") == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM message_recipients WHERE redeliver_until IS NOT NULL"
        )
        == 0
    )


async def test_two_instances_racing_redeliver_a_recipient_once(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, REDELIVERING)
    other = await sandbox_hub(aiohttp_client, dsn)  # a second instance: its own pool
    message_id, swift_id = await silent_send(hub)
    await report(db, "swift", swift_id, "+447700900007", Status.UNDELIVERED)

    await asyncio.gather(
        Redeliveries(hub.app[AppContext.KEY]).tick(),
        Redeliveries(other.app[AppContext.KEY]).tick(),
    )

    attempts = await db.fetch(
        "SELECT provider, attempt FROM message_recipients WHERE message_id = $1 ORDER BY attempt",
        uuid.UUID(message_id),
    )
    assert [(a["provider"], a["attempt"]) for a in attempts] == [("swift", 1), ("carrierx", 2)]
    assert taken(hub, "carrierx") + taken(other, "carrierx") == 1


async def test_a_late_delivery_of_the_first_attempt_after_the_second_is_a_double_delivery(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, REDELIVERING)
    message_id, swift_id = await silent_send(hub)
    await report(db, "swift", swift_id, "+447700900007", Status.UNDELIVERED)
    await Redeliveries(hub.app[AppContext.KEY]).tick()
    carrierx_id = await db.fetchval(
        "SELECT provider_message_id FROM message_recipients WHERE message_id = $1"
        " AND provider = 'carrierx'",
        uuid.UUID(message_id),
    )
    await report(db, "carrierx", carrierx_id, "+447700900007", Status.DELIVERED, kind=None)
    await report(db, "swift", swift_id, "+447700900007", Status.DELIVERED, kind=None)

    stats = await (await hub.get("/v1/stats")).json()
    view = await (await hub.get(f"/v1/messages/{message_id}")).json()

    assert stats["providers"]["swift"]["double_deliveries"] == 1
    assert view["recipients"][0]["status"] == "delivered"


async def test_the_console_shows_routes_their_split_health_and_a_messages_attempts(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, SWIFT_THEN_CARRIERX, health_send_errors=1)
    await break_provider(hub, "swift", mode="down")
    _, sent = await send(hub)

    routes_page = await (await hub.get("/console/routes")).text()
    providers_page = await (await hub.get("/console/providers")).text()
    message_page = await (await hub.get(f"/console/messages/{sent['id']}")).text()

    assert 'id="route-uk"' in routes_page
    assert "swift → carrierx" in routes_page
    assert "operator (API_AUTH off)" in routes_page  # the change history
    split = providers_page[providers_page.index('id="split-uk"') :]
    assert "carrierx 100% (1)" in split[: split.index("</tr>")]
    swift = providers_page[providers_page.index('id="provider-swift"') :]
    assert "degraded" in swift[: swift.index("</tr>")]
    assert "route uk: priority: swift first" in message_page
    assert "attempt 2: swift unknown → carrierx" in message_page


async def test_the_failover_demo_shows_messages_moving_off_a_provider_that_goes_down(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn)
    lines: list[str] = []

    status = await run_failover_demo(str(hub.make_url("/")), emit=lines.append)

    assert status == 0, lines
    shown = "\n".join(lines)
    assert "+447700900001: swift (accepted); carried by swift" in shown
    assert (
        "+447700900001: swift (outcome_unknown) -> carrierx (queued); carried by carrierx" in shown
    )
    assert (taken(hub, "swift"), taken(hub, "carrierx")) == (3, 3)
    assert await db.fetchval("SELECT count(*) FROM send_routes") == 0  # cleaned up
    assert sandbox(hub).troubles == {}


async def test_a_routed_message_with_a_send_time_is_held_by_the_hub_and_fails_over_when_sent(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await hub_with(aiohttp_client, dsn, SWIFT_THEN_CARRIERX)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    status, held = await send(hub, send_at=later)
    assert status == 201, held
    assert held["recipients"][0]["status"] == "scheduled"
    assert taken(hub, "swift") + taken(hub, "carrierx") == 0
    await break_provider(hub, "swift", mode="down")
    await db.execute("UPDATE messages SET dispatch_at = now() WHERE id = $1", uuid.UUID(held["id"]))

    assert await Scheduler(hub.app[AppContext.KEY]).tick() == 1

    view = await (await hub.get(f"/v1/messages/{held['id']}")).json()
    [recipient] = view["recipients"]
    assert [a["provider"] for a in recipient["attempts"]] == ["swift", "carrierx"]
    assert (taken(hub, "swift"), taken(hub, "carrierx")) == (0, 1)


async def test_a_provider_refusing_connections_fails_over_at_once(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    closed = ProviderSettings(
        base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        api_key=SecretStr("k"),
        allow_unauthenticated=True,
    )
    hub = await hub_with(aiohttp_client, dsn, SWIFT_THEN_CARRIERX, providers={"swift": closed})

    # A real number: swift is a real provider to the hub here.
    status, sent = await send(hub, to="+447400123451", **{"from": "+447400900999"})

    assert status == 201, sent
    [recipient] = sent["recipients"]
    assert next((a["provider"], a["error_code"]) for a in recipient["attempts"]) == (
        "swift",
        "not_sent",
    )
    assert recipient["provider"] == "carrierx"
