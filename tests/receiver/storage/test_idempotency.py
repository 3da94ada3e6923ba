"""Idempotency keys at rest: answers past their retention and claims that never answered are
purged in bounded batches; what a request may still find stays."""

from __future__ import annotations

import asyncpg

from receiver.storage.idempotency import purge_idempotency


async def test_purge_keeps_only_what_a_request_may_still_find(db: asyncpg.Connection) -> None:
    rows = [
        ("answered-expired", 201, "now() - interval '1 minute'", "now() - interval '2 days'"),
        ("answered-kept", 201, "now() + interval '1 hour'", "now() - interval '2 days'"),
        ("claim-dead", None, "now() + interval '1 day'", "now() - interval '20 minutes'"),
        ("claim-running", None, "now() + interval '1 day'", "now() - interval '1 second'"),
    ]
    for key, status, expires_at, created_at in rows:
        await db.execute(
            "INSERT INTO idempotency_keys"
            " (owner, key, request_hash, response_status, response_body, expires_at, created_at)"
            f" VALUES ('', $1, 'h', $2, '{{}}', {expires_at}, {created_at})",
            key,
            status,
        )

    assert await purge_idempotency(db, stale_s=600) == 2
    assert await purge_idempotency(db, stale_s=600) == 0
    left = {row["key"] for row in await db.fetch("SELECT key FROM idempotency_keys")}
    assert left == {"answered-kept", "claim-running"}


async def test_purge_goes_in_bounded_batches(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO idempotency_keys (owner, key, request_hash, response_status, expires_at)"
        " SELECT '', 'k' || n, 'h', 201, now() - interval '1 minute'"
        " FROM generate_series(1, 25) AS n"
    )

    assert await purge_idempotency(db, stale_s=600, batch=10) == 10
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys") == 15
