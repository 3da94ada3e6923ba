"""Sends retried only where nothing was sent: a 429 after its Retry-After within
SEND_RETRY_BUDGET_S (then failed, temporary: never a permanent refusal); a 500/502/503 with
backoff; never a 504 or a timeout, which may hide a sent message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from normalizers.registry import DEFAULT_REGISTRY
from receiver.config import ProviderSettings
from receiver.sending.providers import retry_after_s
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]


def message(provider: str, text: str) -> dict[str, Any]:
    # A valid number: the fake providers below are real ones to the hub (no drama numbers).
    sender = "MyApp" if provider == "telecom23" else "+447400900999"
    return {"provider": provider, "to": ["+447400900001"], "from": sender, "body": text}


@pytest.mark.parametrize("provider", sorted(DEFAULT_REGISTRY))
async def test_a_429_is_retried_after_its_retry_after_and_goes_through(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, provider: str
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)

    answer = await hub.post("/v1/messages", json=message(provider, "ERROR:RATE_LIMITED"))

    sent = await answer.json()
    assert answer.status == 201, sent
    [recipient] = sent["recipients"]
    assert recipient["status"] in ("accepted", "queued", "sent", "scheduled")
    assert recipient["failure_kind"] is None


async def test_a_429_beyond_the_budget_fails_temporary_never_rejected(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn, send_retry_budget_s=0.2)  # under Retry-After: 1

    answer = await hub.post("/v1/messages", json=message("carrierx", "ERROR:RATE_LIMITED"))

    body = await answer.json()
    assert answer.status == 502
    stored = body["error"]["details"]["message"]["recipients"][0]
    assert (stored["status"], stored["failure_kind"], stored["error_code"]) == (
        "failed",
        "temporary",
        "rate_limited",
    )


def carrierx_answer(sid: str) -> dict[str, Any]:
    return {
        "message_sid": sid,
        "status": "queued",
        "to": "447400900001",
        "from": "447400900999",
        "direction": "outbound",
        "message_segments": 1,
    }


async def fake_carrierx(statuses: list[int]) -> tuple[TestServer, list[int]]:
    """A CarrierX answering the given statuses in turn (then 200), counting the calls."""
    calls: list[int] = []

    async def send(request: web.Request) -> web.Response:
        calls.append(1)
        status = statuses[len(calls) - 1] if len(calls) <= len(statuses) else 200
        if status == 200:
            return web.json_response(carrierx_answer(f"cx-{len(calls)}"))
        return web.json_response({"message": "try later"}, status=status)

    app = web.Application()
    app.router.add_post("/core/v2/sms/messages", send)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, calls


@pytest.mark.parametrize(
    ("statuses", "calls", "status"),
    [
        ([503], 2, "queued"),  # retried, then through
        ([500, 502], 3, "queued"),
        ([503, 503, 503], 3, "unknown"),  # SEND_ATTEMPTS (3) spent: it may have been sent
        ([504], 1, "unknown"),  # a gateway timeout may hide a sent message: never again
    ],
)
async def test_5xx_are_retried_with_backoff_but_never_a_504(
    aiohttp_client: Any,
    dsn: str,
    db: asyncpg.Connection,
    statuses: list[int],
    calls: int,
    status: str,
) -> None:
    server, made = await fake_carrierx(statuses)
    try:
        account = ProviderSettings(
            base_url=str(server.make_url("")).rstrip("/"),
            api_key=SecretStr("k"),
            allow_unauthenticated=True,
        )
        hub = await sandbox_hub(aiohttp_client, dsn, providers={"carrierx": account})

        answer = await hub.post("/v1/messages", json=message("carrierx", "hi"))
        body = await answer.json()
    finally:
        await server.close()

    assert len(made) == calls
    recipients = (
        body["recipients"]
        if answer.status == 201
        else body["error"]["details"]["message"]["recipients"]
    )
    assert recipients[0]["status"] == status


def test_retry_after_is_seconds_or_an_http_date() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=30)

    assert retry_after_s({"Retry-After": "3"}) == 3.0
    assert retry_after_s({"retry-after": " 0 "}) == 0.0
    from_date = retry_after_s({"Retry-After": format_datetime(soon, usegmt=True)})
    assert from_date is not None
    assert 25 < from_date <= 30
    assert retry_after_s({"Retry-After": "soon"}) is None
    assert retry_after_s({}) is None


async def test_apicontrol_counting_other_recipients_than_sent_is_shown_on_the_message(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    async def send(request: web.Request) -> web.Response:
        return web.json_response({"messageID": 77, "num_parts": 1, "num_recipients": 1}, status=201)

    app = web.Application()
    app.router.add_post("/sms/message", send)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        account = ProviderSettings(
            base_url=str(server.make_url("")).rstrip("/"),
            api_key=SecretStr("k"),
            allow_unauthenticated=True,
        )
        hub = await sandbox_hub(aiohttp_client, dsn, providers={"apicontrol": account})
        two = message("apicontrol", "hi") | {"to": ["+447400900001", "+447400900002"]}

        answer = await hub.post("/v1/messages", json=two)
        sent = await answer.json()
        view = await (await hub.get(f"/v1/messages/{sent['id']}")).json()
    finally:
        await server.close()

    assert answer.status == 201
    assert sent["provider_recipients"] == 1
    assert (view["provider_recipients"], len(view["recipients"])) == (1, 2)
