"""POST /v1/messages end to end: every adapter against its simulated provider over real HTTP,
then the provider's reports arriving at the hub's callback URL; validation, idempotency,
batching, retries, segments, and each provider's refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import structlog.testing
from aiohttp.test_utils import TestClient

from receiver.app import create_app
from receiver.config import ProviderSettings, Settings
from receiver.sending import providers
from receiver.sending.route import SendMessageIn, hash_of
from receiver.storage.apikeys import create_key
from tests.helpers import free_port, sandbox_hub

Client = TestClient[Any, Any]
PROVIDERS = ["apicontrol", "telecom23", "properties", "swift", "carrierx"]
SENDER = "+447700900999"


@pytest.fixture
async def hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    """The hub with its simulated providers, reachable at its PUBLIC_BASE_URL."""
    port = free_port()
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        public_base_url=f"http://127.0.0.1:{port}",
        sandbox=True,
        sandbox_delay_s=0.05,
        send_timeout_s=5,
    )
    client: Client = await aiohttp_client(create_app(settings, dsn), server_kwargs={"port": port})
    return client


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 8.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("the reports did not arrive in time")
        await asyncio.sleep(0.05)


async def send(client: Client, headers: dict[str, str] | None = None, **body: Any) -> Any:
    payload = {"from": SENDER, "body": "Hello from the hub"} | body
    return await client.post("/v1/messages", json=payload, headers=headers or {})


async def statuses(db: asyncpg.Connection, message_id: str) -> dict[str, str]:
    rows = await db.fetch(
        "SELECT recipient, status FROM message_recipients WHERE message_id = $1::uuid",
        message_id,
    )
    return {row["recipient"]: row["status"] for row in rows}


# What each provider's reports end in, per last digit (properties sends receipts only for
# delivered messages: an undelivered one stays `accepted`).
EXPECTED_FINAL = {
    "1": "delivered",
    "2": "undelivered",
    "4": "rejected",
    "5": "delivered",
    "8": "delivered",
}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_send_then_the_reports_arrive(
    hub: Client, db: asyncpg.Connection, provider: str
) -> None:
    numbers = [f"+44770090000{digit}" for digit in EXPECTED_FINAL]
    response = await send(hub, provider=provider, to=numbers, ref=f"order-{provider}")
    answer = await response.json()

    assert response.status == 201, answer
    assert answer["provider"] == provider
    assert (answer["segments"], answer["encoding"]) == (1, "GSM-7")
    by_number = {r["to"]: r for r in answer["recipients"]}
    # apicontrol accepts a message as a whole and reports a rejected recipient later.
    at_send = "accepted" if provider == "apicontrol" else "rejected"
    assert by_number["+447700900004"]["status"] == at_send
    assert by_number["+447700900001"]["provider_message_id"]
    message = await db.fetchrow(
        "SELECT client_ref, segments, encoding FROM messages WHERE id = $1::uuid", answer["id"]
    )
    assert message is not None
    assert tuple(message) == (f"order-{provider}", 1, "GSM-7")

    expected = {f"+44770090000{d}": s for d, s in EXPECTED_FINAL.items()}
    if provider == "properties":
        expected["+447700900002"] = "accepted"

    async def settled() -> bool:
        return await statuses(db, answer["id"]) == expected

    await eventually(settled)

    async def replied() -> bool:
        replies = await db.fetchval(
            "SELECT count(*) FROM events WHERE provider = $1 AND type = 'message.inbound'",
            provider,
        )
        return bool(replies == 1)

    await eventually(replied)  # the number ending in 8 answers

    async def duplicate_seen() -> bool:
        count = await db.fetchval(
            "SELECT count(*) FROM raw_callbacks WHERE provider = $1 AND outcome = 'duplicate'",
            provider,
        )
        return bool(count)

    await eventually(duplicate_seen)  # the number ending in 5 reported twice: stored once
    timeline = await db.fetch(
        "SELECT e.status, e.sequence FROM events e JOIN message_recipients r"
        " ON r.id = e.recipient_id WHERE r.recipient = '+447700900005' AND r.message_id = $1::uuid"
        " ORDER BY e.sequence",
        answer["id"],
    )
    assert [row["sequence"] for row in timeline] == list(range(1, len(timeline) + 1))


async def test_validation_errors_name_each_field(hub: Client) -> None:
    response = await hub.post(
        "/v1/messages",
        json={"provider": "swift", "to": ["not-a-number"], "body": "x" * 5000, "colour": "red"},
    )
    answer = await response.json()

    assert response.status == 422
    fields = {detail["field"] for detail in answer["error"]["details"]}
    assert {"to.0", "body", "colour"} <= fields  # each number by its index


async def test_not_json_is_422(hub: Client) -> None:
    response = await hub.post("/v1/messages", data=b"{nope")

    assert response.status == 422
    assert (await response.json())["error"]["code"] == "validation_error"


async def test_unknown_provider_is_400_and_no_provider_nor_route_is_409(hub: Client) -> None:
    unknown = await send(hub, provider="pigeon", to=["+447700900001"])
    missing = await send(hub, to=["+447700900001"])

    assert (unknown.status, missing.status) == (400, 409)
    assert "pigeon" in (await unknown.json())["error"]["message"]
    refusal = (await missing.json())["error"]
    assert refusal["code"] == "no_route"
    assert refusal["details"] == [
        {"field": "to.0", "error": "no route matches +447700900001 and no provider"}
    ]


async def test_provider_options_are_validated_by_the_adapter(hub: Client) -> None:
    response = await send(
        hub, provider="apicontrol", to=["+447700900001"], options={"delivery_report": "weekly"}
    )

    assert response.status == 422
    assert (await response.json())["error"]["details"][0]["field"] == "options.delivery_report"


async def test_idempotency_key_replays_and_refuses_another_body(
    hub: Client, db: asyncpg.Connection
) -> None:
    key = {"Idempotency-Key": "order-77-try"}
    first = await send(hub, key, provider="carrierx", to=["+447700900001"])
    again = await send(hub, key, provider="carrierx", to=["+447700900001"])
    other = await send(hub, key, provider="carrierx", to=["+447700900009"])

    assert (first.status, again.status, other.status) == (201, 201, 409)
    assert await again.json() == await first.json()
    assert await db.fetchval("SELECT count(*) FROM messages") == 1
    sent = await db.fetchval("SELECT count(*) FROM raw_callbacks WHERE source = 'send_answer'")
    assert sent == 1


async def test_an_idempotency_key_belongs_to_the_api_key_that_sent_it(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    keyed = await sandbox_hub(aiohttp_client, dsn, api_auth=True, send_timeout_s=5, dispatcher=True)
    _, first = await create_key(db, "first", ["send"])
    _, second = await create_key(db, "second", ["send"])

    def headers(secret: str) -> dict[str, str]:
        return {"Idempotency-Key": "order-8", "Authorization": f"Bearer {secret}"}

    mine = await send(keyed, headers(first), provider="carrierx", to=["+447700900001"])
    theirs = await send(keyed, headers(second), provider="carrierx", to=["+447700900001"])
    mine_again = await send(keyed, headers(first), provider="carrierx", to=["+447700900001"])

    assert (mine.status, theirs.status, mine_again.status) == (201, 201, 201)
    ids = [(await answer.json())["id"] for answer in (mine, theirs, mine_again)]
    assert ids[0] == ids[2] != ids[1]  # the second key never reads the first one's answer
    assert await db.fetchval("SELECT count(*) FROM messages") == 2


async def test_a_key_whose_request_died_mid_way_is_released_after_a_while(
    hub: Client, db: asyncpg.Connection
) -> None:
    body = {"from": SENDER, "body": "Hello from the hub", "provider": "carrierx"}
    same = hash_of(SendMessageIn.model_validate(body | {"to": ["+447700900001"]}))
    for key, age in (("died-long-ago", 1200), ("still-running", 1)):
        await db.execute(
            "INSERT INTO idempotency_keys (owner, key, request_hash, created_at, expires_at)"
            " VALUES ('', $1, $2, now() - make_interval(secs => $3), now() + interval '1 day')",
            key,
            same,
            age,
        )

    retried = await send(
        hub, {"Idempotency-Key": "died-long-ago"}, provider="carrierx", to=["+447700900001"]
    )
    running = await send(
        hub, {"Idempotency-Key": "still-running"}, provider="carrierx", to=["+447700900001"]
    )

    assert retried.status == 201  # IDEMPOTENCY_STALE_S (10 min) passed: the key is free again
    assert running.status == 409
    assert (await running.json())["error"]["message"] == (
        "a request with this Idempotency-Key is still running"
    )


async def test_telecom23_sends_over_100_recipients_in_batches(
    hub: Client, db: asyncpg.Connection
) -> None:
    # Numbers ending in 4 are refused and 99 fails once: leave them out of this one.
    numbers = [f"+4477009{n:05d}" for n in range(300) if str(n)[-1] not in "49"][:230]
    response = await send(hub, provider="telecom23", to=numbers)
    answer = await response.json()

    assert response.status == 201
    assert len(answer["recipients"]) == 230
    assert {r["provider_message_id"] is not None for r in answer["recipients"]} == {True}
    # Fast reports may already have moved some on: none is refused.
    assert {r["status"] for r in answer["recipients"]} <= {"accepted", "sent", "delivered"}
    calls = await db.fetchval(
        "SELECT count(*) FROM raw_callbacks WHERE source = 'send_answer' AND provider = 'telecom23'"
    )
    assert calls == 3


async def test_telecom23_db_error_is_retried_because_the_batch_is_atomic(
    hub: Client, db: asyncpg.Connection
) -> None:
    response = await send(hub, provider="telecom23", to=["+447700900199"])
    answer = await response.json()

    assert response.status == 201
    assert answer["recipients"][0]["status"] == "accepted"
    answers = await db.fetch(
        "SELECT body FROM raw_callbacks WHERE source = 'send_answer' ORDER BY received_at"
    )
    assert len(answers) == 1  # the failed try left nothing behind but a log line


@pytest.mark.parametrize(
    ("provider", "code"),
    [
        ("carrierx", "400"),
        ("properties", "InvalidDestination"),
        ("swift", "recipient_error"),
        ("telecom23", "blocked_country"),
    ],
)
async def test_a_refusal_of_every_recipient_is_502_with_the_provider_error(
    hub: Client, db: asyncpg.Connection, provider: str, code: str
) -> None:
    response = await send(hub, provider=provider, to=["+447700900004"])
    answer = await response.json()

    if provider == "telecom23":  # 200 with a per-recipient refusal: not a refused request
        assert response.status == 201
        assert answer["recipients"][0]["error_code"] == code
        return
    assert response.status == 502
    assert answer["error"]["code"] == "provider_refused"
    assert answer["error"]["details"]["provider_error_code"] == code
    recipient = answer["error"]["details"]["message"]["recipients"][0]
    assert (recipient["status"], recipient["final"]) == ("rejected", True)


async def test_apicontrol_num_parts_max_sends_nothing(hub: Client) -> None:
    response = await send(
        hub,
        provider="apicontrol",
        to=["+447700900001"],
        body="x" * 200,
        options={"num_parts_max": 1},
    )
    answer = await response.json()

    assert response.status == 502
    assert answer["error"]["details"]["provider_error_code"] == "num_parts_max"


@pytest.mark.parametrize(
    ("text", "segments", "encoding"),
    [
        ("a" * 160, 1, "GSM-7"),
        ("a" * 161, 2, "GSM-7"),
        ("€" * 81, 2, "GSM-7"),
        ("Ça coûte cher" + "я" * 60, 2, "UCS-2"),
    ],
)
async def test_segments_are_counted_and_match_the_provider(
    hub: Client, text: str, segments: int, encoding: str
) -> None:
    response = await send(hub, provider="swift", to=["+447700900001"], body=text)
    answer = await response.json()

    assert response.status == 201
    assert (answer["segments"], answer["encoding"], answer["provider_segments"]) == (
        segments,
        encoding,
        segments,
    )


async def test_swift_per_part_reports_deliver_the_recipient_when_all_parts_are(
    hub: Client, db: asyncpg.Connection
) -> None:
    response = await send(hub, provider="swift", to=["+447700900006"], body="b" * 200)
    answer = await response.json()
    assert answer["segments"] == 2

    async def delivered() -> bool:
        return await statuses(db, answer["id"]) == {"+447700900006": "delivered"}

    await eventually(delivered)
    parts = await db.fetch(
        "SELECT DISTINCT provider_part_id FROM events WHERE provider_part_id IS NOT NULL"
    )
    assert len(parts) == 2
    assert (
        await db.fetchval("SELECT count(*) FROM message_recipients WHERE message_id IS NULL") == 0
    )


async def test_an_unreachable_provider_marks_recipients_failed_temporarily(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        send_timeout_s=2,
        providers={"carrierx": ProviderSettings(base_url=f"http://127.0.0.1:{free_port()}")},
    )
    client = await aiohttp_client(create_app(settings, dsn))

    response = await send(client, provider="carrierx", to=["+447400900001"])
    answer = await response.json()

    assert response.status == 502
    recipient = answer["error"]["details"]["message"]["recipients"][0]
    assert (recipient["status"], recipient["failure_kind"]) == ("failed", "temporary")


ERROR_ANSWERS = [
    ("apicontrol", "400", "validation", "rejected"),
    ("apicontrol", "401", "401", "rejected"),
    ("apicontrol", "403", "permission", "rejected"),
    ("apicontrol", "404", "404", "rejected"),
    ("apicontrol", "405", "405", "rejected"),
    ("telecom23", "INVALID_BODY", "INVALID_BODY", "rejected"),
    ("telecom23", "INVALID_TO", "INVALID_TO", "rejected"),
    ("telecom23", "INVALID_MESSAGE", "INVALID_MESSAGE", "rejected"),
    ("telecom23", "INVALID_SENDER", "INVALID_SENDER", "rejected"),
    ("telecom23", "TOO_MANY_RECIPIENTS", "TOO_MANY_RECIPIENTS", "rejected"),
    ("telecom23", "INSUFFICIENT_BALANCE", "INSUFFICIENT_BALANCE", "failed"),
    ("telecom23", "NO_SMS_ACCESS", "NO_SMS_ACCESS", "failed"),
    ("telecom23", "CONFIG_ERROR", "CONFIG_ERROR", "failed"),
    ("telecom23", "WORKSPACE_NOT_AVAILABLE", "WORKSPACE_NOT_AVAILABLE", "failed"),
    ("telecom23", "DB_ERROR", "DB_ERROR", "failed"),  # retried, every try fails
    ("properties", "InvalidParameter", "InvalidParameter", "rejected"),
    ("properties", "Unauthorized", "Unauthorized", "failed"),
    ("properties", "Forbidden", "Forbidden", "failed"),
    ("properties", "InternalError", "outcome_unknown", "unknown"),
    ("swift", "unauthorized", "unauthorized", "failed"),
    ("swift", "internal_error", "outcome_unknown", "unknown"),
    ("swift", "ACCOUNT_SMS_DISABLED", "ACCOUNT_SMS_DISABLED", "rejected"),
    ("swift", "temporary_error", "temporary_error", "failed"),
    ("carrierx", "400", "400", "rejected"),
    ("carrierx", "401", "401", "rejected"),
    ("carrierx", "403", "403", "rejected"),
    ("carrierx", "500", "outcome_unknown", "unknown"),
]


@pytest.mark.parametrize(
    ("provider", "asked", "code", "status"),
    ERROR_ANSWERS,
    ids=[f"{p}-{a}" for p, a, _, _ in ERROR_ANSWERS],
)
async def test_each_documented_error_answer_end_to_end(
    hub: Client, db: asyncpg.Connection, provider: str, asked: str, code: str, status: str
) -> None:
    response = await send(hub, provider=provider, to=["+447700900001"], body=f"ERROR:{asked}")
    answer = await response.json()

    assert response.status == 502, answer
    assert answer["error"]["details"]["provider_error_code"] == code
    expected_code = "provider_outcome_unknown" if status == "unknown" else "provider_refused"
    assert answer["error"]["code"] == expected_code
    [recipient] = answer["error"]["details"]["message"]["recipients"]
    # A provider that did not answer usably may have sent it: not final, reports still count.
    assert (recipient["status"], recipient["final"]) == (status, status != "unknown")
    stored = await db.fetchrow(
        "SELECT status, error_code FROM events WHERE message_id = $1::uuid",
        answer["error"]["details"]["message"]["id"],
    )
    assert stored is not None
    assert (stored["status"], stored["error_code"]) == (status, code)


async def test_a_telecom23_402_says_the_balance_and_the_cost(
    hub: Client, db: asyncpg.Connection
) -> None:
    response = await send(
        hub, provider="telecom23", to=["+447700900001"], body="ERROR:INSUFFICIENT_BALANCE"
    )
    details = (await response.json())["error"]["details"]

    assert response.status == 502
    assert details["provider_details"]["currency"] == "GBP"
    assert {"balance", "estimated_cost"} <= set(details["provider_details"])
    [recipient] = details["message"]["recipients"]
    assert (recipient["status"], recipient["failure_kind"]) == ("failed", "temporary")
    assert "estimated cost" in recipient["error_message"]


@pytest.mark.parametrize(
    ("kind", "event_type"),
    [
        ("summary", "message.summary"),
        ("details", "message.status"),
        ("per_recipient_final", "message.status"),
        ("per_recipient", "message.status"),
    ],
)
async def test_apicontrol_reports_come_in_the_kind_the_message_asked_for(
    hub: Client, db: asyncpg.Connection, kind: str, event_type: str
) -> None:
    numbers = ["+447700900001", "+447700900002"]
    response = await send(hub, provider="apicontrol", to=numbers, options={"delivery_report": kind})
    assert response.status == 201

    async def reported() -> bool:
        kinds = await db.fetch(
            "SELECT DISTINCT e.type FROM events e JOIN raw_callbacks r ON r.id = e.raw_id"
            " WHERE r.source = 'callback'"
        )
        return {row["type"] for row in kinds} == {event_type}

    await eventually(reported)
    if kind != "summary":
        message_id = (await response.json())["id"]

        async def final() -> bool:
            return await statuses(db, message_id) == {
                "+447700900001": "delivered",
                "+447700900002": "undelivered",
            }

        await eventually(final)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_properties_receipts_by_get_or_post(
    hub: Client, db: asyncpg.Connection, method: str
) -> None:
    response = await send(
        hub,
        provider="properties",
        to=["+61488023551"],
        options={"delivery_receipt_method": method},
    )
    message_id = (await response.json())["id"]

    async def delivered() -> bool:
        return await statuses(db, message_id) == {"+61488023551": "delivered"}

    await eventually(delivered)
    receipt = await db.fetchrow("SELECT method, query FROM raw_callbacks WHERE source = 'callback'")
    assert receipt is not None
    assert receipt["method"] == method
    assert ("Message.Sid=" in receipt["query"]) is (method == "GET")


async def test_the_demo_shows_statuses_arriving(hub: Client, dsn: str) -> None:
    from receiver.demo import run_demo

    lines: list[str] = []
    base_url = str(hub.make_url("/")).rstrip("/")

    assert await run_demo(base_url, dsn, seconds=2.0, emit=lines.append) == 0

    text = "\n".join(lines)
    for provider in PROVIDERS:
        assert f"{provider}: sent as" in text
    assert "-> delivered" in text
    assert "-> undelivered" in text
    assert text.count("reply from +447700900008: 'YES'") == len(PROVIDERS)


@pytest.mark.parametrize(
    "body",
    [
        {"body": "a\u0000b"},
        {"ref": "x\u0000"},
        {"send_at": "0001-01-01T00:00:00+14:00"},
        {"expires_at": "2024-06-03T10:00:00"},  # no zone
    ],
)
async def test_bad_text_and_times_are_422_not_500(hub: Client, body: dict[str, Any]) -> None:
    response = await send(hub, provider="carrierx", to=["+447700900001"], **body)

    assert response.status == 422
    assert (await response.json())["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    ("body", "field", "error"),
    [
        ({"from": "+4" + "4" * 69}, "from", "String should have at most 64 characters"),
        ({"from": "+4\u0000" + "4" * 69}, "from", "String should have at most 64 characters"),
        ({"body": "a\u0000b"}, "body", "Value error, must not contain a NUL character"),
        ({"ref": "r" * 256}, "ref", "String should have at most 255 characters"),
        ({"send_at": "2024-06-03T10:00:00"}, "send_at", "Value error, must be an RFC 3339 time"),
        ({"send_at": "0001-01-01T00:00:00Z"}, "send_at", "Value error, must be an RFC 3339 time"),
        ({"body": ""}, "body", "body is required (empty only with media_urls)"),
        ({"body": "x" * 1601, "options": {"type": "mms"}}, "body", "an MMS text is at most 1600"),
    ],
)
async def test_a_422_names_the_field_and_the_first_rule_it_breaks(
    hub: Client, body: dict[str, Any], field: str, error: str
) -> None:
    response = await send(hub, provider="carrierx", to=["+447700900001"], **body)

    assert response.status == 422
    [detail] = (await response.json())["error"]["details"]
    assert detail["field"] == field
    assert detail["error"].startswith(error)


@pytest.mark.parametrize(
    ("provider", "sender"),
    [("telecom23", "My Shop"), ("telecom23", "ABCDEFGHIJKL"), ("properties", "12345")],
)
async def test_a_sender_the_provider_would_refuse_is_422_naming_from(
    hub: Client, db: asyncpg.Connection, provider: str, sender: str
) -> None:
    body: dict[str, Any] = {"from": sender}
    response = await send(hub, provider=provider, to=["+447700900001"], **body)

    assert response.status == 422
    assert [d["field"] for d in (await response.json())["error"]["details"]] == ["from"]
    assert await db.fetchval("SELECT count(*) FROM messages") == 0  # nothing sent or stored


async def test_a_carrierx_mms_with_media_and_no_text_is_sent(hub: Client) -> None:
    response = await send(
        hub,
        provider="carrierx",
        to=["+447700900001"],
        body="",
        options={"media_urls": ["https://media.invalid/a.png"]},
    )

    assert response.status == 201, await response.json()


async def test_a_carrierx_group_mms_goes_to_one_to_only(hub: Client) -> None:
    response = await send(
        hub,
        provider="carrierx",
        to=["+447700900001", "+447700900011"],
        options={"group_recipients": ["+447700900021"]},
    )

    assert response.status == 422
    assert (await response.json())["error"]["details"][0]["field"] == "to"


async def test_idempotency_replays_a_refusal_too(hub: Client, db: asyncpg.Connection) -> None:
    key = {"Idempotency-Key": "k-refused"}
    first = await send(hub, key, provider="pigeon", to=["+447700900001"])
    again = await send(hub, key, provider="pigeon", to=["+447700900001"])

    assert (first.status, again.status) == (400, 400)
    assert await again.json() == await first.json()


async def test_a_provider_answering_too_late_is_not_retried(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    port = free_port()
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        public_base_url=f"http://127.0.0.1:{port}",
        sandbox=True,
        sandbox_delay_s=0.05,
        send_timeout_s=0.5,
    )
    client = await aiohttp_client(create_app(settings, dsn), server_kwargs={"port": port})

    with structlog.testing.capture_logs() as logs:
        response = await send(client, provider="telecom23", to=["+447700900001"], body="ERROR:SLOW")
    answer = await response.json()

    assert response.status == 502
    assert answer["error"]["code"] == "provider_outcome_unknown"
    [recipient] = answer["error"]["details"]["message"]["recipients"]
    assert (recipient["status"], recipient["final"]) == ("unknown", False)
    calls = [entry for entry in logs if entry["event"] == "provider_call"]
    assert [call["attempt"] for call in calls] == [1]  # a timeout may hide a sent SMS


async def test_a_report_without_the_handset_reaches_the_only_recipient(
    hub: Client, db: asyncpg.Connection
) -> None:
    response = await send(hub, provider="telecom23", to=["+447700900007"])  # never reported
    [recipient] = (await response.json())["recipients"]

    report = {"message_id": recipient["provider_message_id"], "status": "DELIVRD"}
    assert (await hub.post("/callbacks/telecom23", json=report)).status == 200

    message_id = (await response.json())["id"]
    assert await statuses(db, message_id) == {"+447700900007": "delivered"}
    assert await db.fetchval("SELECT count(*) FROM message_recipients WHERE recipient = ''") == 0


@pytest.mark.parametrize("provider", ["telecom23", "carrierx", "properties", "swift"])
async def test_reports_racing_the_send_answer_are_attached(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, provider: str
) -> None:
    port = free_port()
    settings = Settings(
        database_url=dsn,
        db_pool_min_size=0,
        db_pool_max_size=10,
        public_base_url=f"http://127.0.0.1:{port}",
        sandbox=True,
        sandbox_delay_s=0,
    )
    client = await aiohttp_client(create_app(settings, dsn), server_kwargs={"port": port})
    numbers = [[f"+4477009{m:03d}{d}1" for d in range(3)] for m in range(12)]

    responses = await asyncio.gather(*(send(client, provider=provider, to=n) for n in numbers))

    assert {r.status for r in responses} == {201}
    ids = [(await r.json())["id"] for r in responses]

    async def all_delivered() -> bool:
        rows = await db.fetch(
            "SELECT status FROM message_recipients WHERE message_id = ANY($1::uuid[])", ids
        )
        return len(rows) == 36 and {row["status"] for row in rows} == {"delivered"}

    await eventually(all_delivered)
    orphans = await db.fetchval(
        "SELECT count(*) FROM message_recipients WHERE message_id IS NULL AND provider = $1",
        provider,
    )
    assert orphans == 0


async def test_a_send_answer_that_loses_a_lock_conflict_is_stored_again(
    hub: Client, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = providers._store_answer
    calls = 0

    async def deadlocked_once(*args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await real(*args)  # written, then undone with the transaction
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        await real(*args)

    monkeypatch.setattr(providers, "_store_answer", deadlocked_once)
    with structlog.testing.capture_logs() as logs:
        response = await send(hub, provider="carrierx", to=["+447700900001", "+447700900003"])
    answer = await response.json()

    assert response.status == 201, answer
    assert calls == 3  # CarrierX: one call per recipient, the first stored twice
    assert any(entry["event"] == "send_answer_store_retried" for entry in logs)
    assert not any(entry["event"] == "send_answer_not_stored" for entry in logs)
    provider_ids = await db.fetch(
        "SELECT provider_message_id FROM message_recipients WHERE message_id = $1::uuid",
        answer["id"],
    )
    assert len(provider_ids) == 2
    assert not any(row["provider_message_id"].startswith("pending:") for row in provider_ids)
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks WHERE source = 'send_answer'") == 2
