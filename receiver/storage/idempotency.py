"""Idempotency-Key of the send API: claimed before sending, answered once, replayed after."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from receiver.storage.pool import Connection


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """`claimed`: go ahead; `replay`: answer with the stored response; `conflict`: the key was
    used with another body; `in_progress`: the first request with this key is still running."""

    state: str
    status: int | None = None
    body: Any = None


async def claim_idempotency(
    connection: Connection, key: str, request_hash: str, ttl_s: int
) -> IdempotencyClaim:
    async with connection.transaction():
        # A key still running is never expired here: its request may be sending right now.
        await connection.execute(
            "DELETE FROM idempotency_keys WHERE key = $1 AND expires_at < now()"
            " AND response_status IS NOT NULL",
            key,
        )
        claimed = await connection.fetchval(
            """
            INSERT INTO idempotency_keys (key, request_hash, expires_at)
            VALUES ($1, $2, now() + make_interval(secs => $3))
            ON CONFLICT (key) DO NOTHING
            RETURNING true
            """,
            key,
            request_hash,
            ttl_s,
        )
        if claimed:
            return IdempotencyClaim("claimed")
        row = await connection.fetchrow(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys"
            " WHERE key = $1",
            key,
        )
    if row is None:  # expired and removed by another request meanwhile: try again
        return await claim_idempotency(connection, key, request_hash, ttl_s)
    if row["request_hash"] != request_hash:
        return IdempotencyClaim("conflict")
    if row["response_status"] is None:
        return IdempotencyClaim("in_progress")
    return IdempotencyClaim("replay", row["response_status"], json.loads(row["response_body"]))


async def complete_idempotency(
    connection: Connection, key: str, status: int, body: Any, ttl_s: int
) -> None:
    """The answer to replay; remembered for the full TTL from now, however long sending took."""
    await connection.execute(
        "UPDATE idempotency_keys SET response_status = $2, response_body = $3::jsonb,"
        " expires_at = now() + make_interval(secs => $4) WHERE key = $1",
        key,
        status,
        json.dumps(body),
        ttl_s,
    )


async def release_idempotency(connection: Connection, key: str) -> None:
    """The first request failed before it could answer: a retry with the key may run."""
    await connection.execute(
        "DELETE FROM idempotency_keys WHERE key = $1 AND response_status IS NULL", key
    )
