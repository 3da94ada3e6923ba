"""Subscriptions to brokers, without a broker: what the API takes and refuses (naming the field),
and a destination whose broker cannot be reached giving failed attempts with a clear error while
webhooks go on. (With real brokers: tests/brokers, `make test-brokers`.)"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from receiver.app import create_app
from tests.helpers import free_port
from tests.receiver.delivery.test_delivery import (
    Client,
    Subscriber,
    eventually,
    hub_settings,
    moved,
    report,
)


@pytest.fixture
async def subscriber(aiohttp_server: Any) -> Subscriber:
    listener = Subscriber()
    app = web.Application()
    app.router.add_post("/hook", listener.handle)
    app.router.add_post("/moved", moved)
    server: TestServer = await aiohttp_server(app)
    listener.url = str(server.make_url("/hook"))
    return listener


JETSTREAM = {"kind": "jetstream", "name": "local", "subject": "sms.events"}
RABBITMQ = {"kind": "rabbitmq", "name": "rabbit", "exchange": "sms", "routing_key": "events"}


@pytest.fixture
async def broker_hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    """A hub whose settings name two brokers on loopback ports where nothing listens."""
    destinations = {
        "local": {"url": f"nats://127.0.0.1:{free_port()}"},
        "rabbit": {"url": f"amqp://guest:secret-pass@127.0.0.1:{free_port()}/"},
    }
    client: Client = await aiohttp_client(
        create_app(hub_settings(dsn, destinations=destinations), dsn)
    )
    return client


async def test_a_subscription_to_each_kind_of_broker_shows_no_credential(
    broker_hub: Client,
) -> None:
    for destination in (JETSTREAM, RABBITMQ):
        made = await broker_hub.post("/v1/subscriptions", json={"destination": destination})
        assert made.status == 201, await made.text()
        body = await made.json()
        assert body["destination"] == destination
        assert body["url"] is None
        assert body["secret"].startswith("whsec_")
    listed = await (await broker_hub.get("/v1/subscriptions")).text()
    assert "secret-pass" not in listed
    assert "127.0.0.1" not in listed  # the broker's address stays in the settings
    page = await (await broker_hub.get("/console/subscriptions")).text()
    assert "<code>jetstream local: sms.events</code>" in page
    assert "<code>rabbitmq rabbit: sms / events</code>" in page
    assert "secret-pass" not in page


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"destination": JETSTREAM | {"name": "nope"}}, "destination.name"),
        ({"destination": JETSTREAM | {"name": "rabbit"}}, "destination.kind"),
        ({"destination": JETSTREAM | {"subject": "sms.*"}}, "destination.jetstream.subject"),
        ({"destination": JETSTREAM | {"subject": "sms..events"}}, "destination.jetstream.subject"),
        ({"destination": RABBITMQ | {"exchange": "sms exchange"}}, "destination.rabbitmq.exchange"),
        (
            {"destination": RABBITMQ | {"routing_key": "k" * 256}},
            "destination.rabbitmq.routing_key",
        ),
        ({"destination": {"kind": "kafka", "name": "local"}}, "destination"),
        ({"destination": JETSTREAM, "url": "http://127.0.0.1:9/x"}, ""),
        ({}, ""),
    ],
)
async def test_a_destination_the_broker_would_refuse_is_a_422_naming_the_field(
    broker_hub: Client, body: dict[str, Any], field: str
) -> None:
    answer = await broker_hub.post("/v1/subscriptions", json=body)
    assert answer.status == 422, await answer.text()
    details = (await answer.json())["error"]["details"]
    assert any(item["field"].startswith(field) for item in details), details


async def test_a_broker_that_is_down_fails_its_attempts_and_never_holds_webhooks(
    broker_hub: Client, db: asyncpg.Connection, subscriber: Subscriber
) -> None:
    await broker_hub.post("/v1/subscriptions", json={"destination": JETSTREAM})
    await broker_hub.post("/v1/subscriptions", json={"destination": RABBITMQ})
    await broker_hub.post("/v1/subscriptions", json={"url": subscriber.url})

    await report(broker_hub, "down-1")

    await eventually(lambda: len(subscriber.received) == 1)  # the webhook is not held

    async def both_failed_once() -> bool:
        rows = await db.fetch(
            "SELECT d.last_error FROM deliveries d JOIN subscriptions s"
            " ON s.id = d.subscription_id WHERE s.destination IS NOT NULL AND d.attempts >= 1"
            " AND d.last_error IS NOT NULL"
        )
        return len(rows) == 2

    await eventually(both_failed_once)
    said = [row["error"] for row in await db.fetch("SELECT error FROM delivery_attempts")]
    assert any(error.startswith("cannot connect to 'local'") for error in said if error)
    assert any(error.startswith("cannot connect to 'rabbit'") for error in said if error)
    assert not any("secret-pass" in error for error in said if error)
    pending = await db.fetchval(
        "SELECT count(*) FROM deliveries WHERE status = 'pending' AND last_error IS NOT NULL"
    )
    assert pending == 2  # retried later, with backoff, as a webhook would be
