"""The list keeps a person opted out without keeping the number (`erase --number`), and its
keyed hashes follow a change of OPT_OUT_SECRET (entries with their number hashed again)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from receiver.config import Settings
from receiver.optouts.keys import check_key
from receiver.storage.pool import open_database
from receiver.upkeep.erasure import erase
from tests.helpers import sandbox_hub
from tests.receiver.optouts.test_keywords import HANDSET, OURS, reply, send

Client = TestClient[Any, Any]


async def test_an_erased_number_stays_suppressed_without_its_number(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await send(hub)
    await reply(db, "STOP")

    erased = await erase(db, HANDSET)

    assert erased.counts["opt-outs kept by their hash alone"] == 1
    assert erased.counts["opt-out events anonymised"] == 1
    row = await db.fetchrow("SELECT number, sender FROM opt_outs")
    assert row is not None
    assert (row["number"], row["sender"]) == (None, OURS)
    assert await db.fetchval("SELECT count(*) FROM events WHERE sender = $1", HANDSET) == 0
    assert (await send(hub))["error_code"] == "opted_out"
    listed = (await (await hub.get("/v1/opt-outs")).json())["data"]
    assert [e["number"] for e in listed] == [None]


async def test_a_new_key_hashes_the_entries_again_and_sends_still_match(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)
    await send(hub)
    await reply(db, "STOP")
    secret = "a-secret-of-the-operator-for-the-opt-out-list"
    settings = Settings(database_url=dsn, db_pool_min_size=0, opt_out_secret=SecretStr(secret))
    keyed = await open_database(dsn, settings)
    try:
        await check_key(keyed, settings)
        await check_key(keyed, settings)  # the second start changes nothing
        async with keyed.connection() as connection:
            hashed = await connection.fetchval("SELECT number_hash FROM opt_outs")
            suppressed = await connection.fetchval(
                "SELECT count(*) FROM opt_outs WHERE number_hash = opt_out_hash($1)", HANDSET
            )
    finally:
        await keyed.close()

    assert hashed == hmac.new(secret.encode(), HANDSET.encode(), hashlib.sha256).digest()
    assert suppressed == 1
    fingerprint = await db.fetchval("SELECT value FROM hub_keys WHERE name = 'opt_out_in_use'")
    pads = settings.opt_out_pads()
    assert pads is not None
    assert fingerprint == hashlib.sha256(bytes.fromhex(pads)).digest()
