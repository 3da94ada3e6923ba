"""Redelivery after the fact (migration 0023): the recipients whose latest attempt has ended
while their route's redelivery window was open, taken under a lock so that two instances never
send one again twice."""

from __future__ import annotations

import asyncpg

from receiver.storage.pool import Connection


async def claim_ended(connection: Connection, limit: int) -> list[asyncpg.Record]:
    """In the caller's transaction: up to `limit` recipients whose redelivery is open and which
    have ended (or whose window has passed), locked (others' locked rows are skipped), each
    with whether any attempt of it was delivered and its message's routing and request."""
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        SELECT r.id, r.message_id, r.recipient, r.provider, r.attempt, r.status, r.final,
               r.superseded, r.failure_kind, r.synthetic_final, r.updated_at, r.redeliver_until,
               r.redeliver_on, m.routing, m.request,
               EXISTS (SELECT 1 FROM message_recipients o
                       WHERE o.message_id = r.message_id AND o.recipient = r.recipient
                         AND o.status = 'delivered') AS delivered_once,
               ARRAY(SELECT o.provider FROM message_recipients o
                     WHERE o.message_id = r.message_id AND o.recipient = r.recipient) AS tried
        FROM message_recipients r JOIN messages m ON m.id = r.message_id
        WHERE r.redeliver_until IS NOT NULL AND (r.final OR r.redeliver_until < now())
        ORDER BY r.redeliver_until
        LIMIT $1
        FOR UPDATE OF r SKIP LOCKED
        """,
        limit,
    )
    return rows


async def close_window(connection: Connection, row_ids: list[int]) -> None:
    """These attempts will not be sent again (ended otherwise, or too late)."""
    await connection.execute(
        "UPDATE message_recipients SET redeliver_until = NULL WHERE id = ANY($1::bigint[])",
        row_ids,
    )
