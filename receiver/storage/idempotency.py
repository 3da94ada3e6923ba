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
    connection: Connection, owner: str, key: str, request_hash: str, ttl_s: int, stale_s: float
) -> IdempotencyClaim:
    """Claims `key` for `owner` (the API key's id, '' without keys). A claim still running is
    never taken over, unless it is older than `stale_s`: its request died before answering."""
    async with connection.transaction():
        await connection.execute(
            f"DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND {_gone('$3')}",
            owner,
            key,
            stale_s,
        )
        claimed = await connection.fetchval(
            """
            INSERT INTO idempotency_keys (owner, key, request_hash, expires_at)
            VALUES ($1, $2, $3, now() + make_interval(secs => $4))
            ON CONFLICT (owner, key) DO NOTHING
            RETURNING true
            """,
            owner,
            key,
            request_hash,
            ttl_s,
        )
        if claimed:
            return IdempotencyClaim("claimed")
        row = await connection.fetchrow(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys"
            " WHERE owner = $1 AND key = $2",
            owner,
            key,
        )
    if row is None:  # expired and removed by another request meanwhile: try again
        return await claim_idempotency(connection, owner, key, request_hash, ttl_s, stale_s)
    if row["request_hash"] != request_hash:
        return IdempotencyClaim("conflict")
    if row["response_status"] is None:
        return IdempotencyClaim("in_progress")
    return IdempotencyClaim("replay", row["response_status"], json.loads(row["response_body"]))


async def complete_idempotency(
    connection: Connection, owner: str, key: str, status: int, body: Any, ttl_s: int
) -> None:
    """The answer to replay; remembered for the full TTL from now, however long sending took."""
    await connection.execute(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4::jsonb,"
        " expires_at = now() + make_interval(secs => $5) WHERE owner = $1 AND key = $2",
        owner,
        key,
        status,
        json.dumps(body),
        ttl_s,
    )


async def release_idempotency(connection: Connection, owner: str, key: str) -> None:
    """The first request failed before it could answer: a retry with the key may run."""
    await connection.execute(
        "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND response_status IS NULL",
        owner,
        key,
    )


async def purge_idempotency(connection: Connection, stale_s: float, batch: int = 10_000) -> int:
    """Removes answers past their retention and claims that never answered, at most `batch`
    rows a call; returns how many."""
    result: str = await connection.execute(
        f"""
        DELETE FROM idempotency_keys WHERE ctid IN (
            SELECT ctid FROM idempotency_keys WHERE {_gone("$1")} LIMIT $2
        )
        """,
        stale_s,
        batch,
    )
    return int(result.split()[-1])


def _gone(stale_s: str) -> str:
    """Rows no request may find any more: answers past their retention, and claims whose
    request died before answering (older than the parameter `stale_s` names, in seconds)."""
    return (
        "((response_status IS NOT NULL AND expires_at < now())"
        f" OR (response_status IS NULL AND created_at < now() - make_interval(secs => {stale_s})))"
    )
