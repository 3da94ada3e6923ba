"""`sms-receiver erase --number`: after it no row holds the number in any spelling; what it says
of other numbers is kept; it reports what it touched."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.upkeep.erasure import NotANumber, erase, spellings
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]
ERASED = "+447700900018"  # the simulated providers deliver it, then the handset replies
KEPT = "+447700900011"


@pytest.fixture
async def hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    return await sandbox_hub(aiohttp_client, dsn)


async def holding(db: asyncpg.Connection, forms: list[str]) -> dict[str, int]:
    """Rows of each table whose text mentions any of the spellings."""
    found = {}
    for table in (
        "raw_callbacks",
        "events",
        "message_recipients",
        "messages",
        "idempotency_keys",
        "deliveries",
    ):
        # a row's text (a raw callback's body is bytes: searched as such)
        body = " OR position(convert_to(f.form, 'UTF8') IN t.body) > 0"
        found[table] = await db.fetchval(
            f"SELECT count(*) FROM {table} t WHERE EXISTS ("
            " SELECT 1 FROM unnest($1::text[]) AS f(form)"
            " WHERE position(f.form IN t::text) > 0"
            f"{body if table == 'raw_callbacks' else ''})",
            forms,
        )
    return found


async def test_no_row_holds_the_number_after_erasing_it(
    hub: Client, db: asyncpg.Connection
) -> None:
    sent = await hub.post(
        "/v1/messages",
        json={"provider": "carrierx", "to": [ERASED, KEPT], "from": "+447700900999", "body": "hi"},
        headers={"Idempotency-Key": "erase-test"},
    )
    assert sent.status == 201
    # an unreadable callback that mentions it (kept as unparsed)
    garbage = await hub.post("/callbacks/swift", data=f"to={ERASED[1:]}&what=???")
    assert garbage.status == 202  # kept, unparsed
    for _ in range(200):  # both delivered, and the reply
        if await db.fetchval("SELECT count(*) FROM events WHERE type = 'message.inbound'"):
            break
        await asyncio.sleep(0.05)
    _, forms = spellings(ERASED)
    before = await holding(db, forms)
    assert before["raw_callbacks"] >= 3  # its reports, its reply, the unreadable one
    assert before["events"] >= 2
    kept_before = await db.fetchval("SELECT count(*) FROM events WHERE recipient = $1", KEPT)

    erased = await erase(db, ERASED)

    assert await holding(db, forms) == dict.fromkeys(before, 0)
    assert erased.counts["raw_callbacks deleted"] == before["raw_callbacks"]
    assert erased.counts["inbound events deleted"] == 1
    assert erased.counts["recipients anonymised"] == 1
    assert erased.counts["messages anonymised"] == 1
    assert erased.counts["idempotency answers deleted"] == 1
    # the other recipient's data, and the message text (sent to both), are kept
    assert await db.fetchval("SELECT count(*) FROM events WHERE recipient = $1", KEPT) == (
        kept_before
    )
    message = await db.fetchrow("SELECT body, request FROM messages")
    assert message is not None
    assert message["body"] == "hi"
    assert KEPT in message["request"]
    view = await hub.get(f"/v1/messages/{(await sent.json())['id']}")
    assert view.status == 200
    statuses = {r["to"]: r["status"] for r in (await view.json())["recipients"]}
    assert statuses[KEPT] == "delivered"
    assert any(to.startswith("[erased]") for to in statuses)


async def test_a_message_sent_to_the_number_alone_loses_its_text(
    hub: Client, db: asyncpg.Connection
) -> None:
    sent = await hub.post(
        "/v1/messages",
        json={"provider": "swift", "to": [ERASED], "from": "+447700900999", "body": "secret"},
    )
    assert sent.status == 201

    await erase(db, ERASED)

    message = await db.fetchrow("SELECT body, request FROM messages")
    assert message is not None
    assert message["body"] is None
    assert "secret" not in message["request"]


def test_spellings_of_a_number() -> None:
    e164, forms = spellings("+44 7700 900018")
    assert e164 == ERASED
    assert set(forms) == {
        ERASED,
        "447700900018",
        "00447700900018",
        "%2B447700900018",
        "07700900018",
    }
    with pytest.raises(NotANumber):
        spellings("07700900018")  # no country: which one?


def test_the_command_erases_and_says_what_it_touched(dsn: str) -> None:
    def command(number: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "receiver", "erase", "--number", number],
            env={**os.environ, "DATABASE_URL": dsn},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    refused = command("not-a-number")
    assert refused.returncode == 2
    assert "not a number" in refused.stderr
    done = command(ERASED)
    assert done.returncode == 0
    said = done.stdout.splitlines()
    assert "nothing held it" in said or any(line.startswith("erased: ") for line in said)
    assert ERASED not in done.stdout + done.stderr  # nor in its logs
