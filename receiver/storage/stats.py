"""Per-provider statistics over a window: messages, delivery rate, final-report latency, reports
by status, and callbacks that were unparsed or refused (rejected)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from receiver.storage.pool import Connection


async def message_stats(connection: Connection, since: datetime | None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        WITH recipients AS (
            SELECT m.provider, m.id AS message_id, r.id, r.status, r.final,
                   coalesce(m.send_at, m.created_at) AS created_at,
                   (SELECT min(e.received_at) FROM events e
                    JOIN raw_callbacks c ON c.id = e.raw_id AND c.source = 'callback'
                    WHERE e.recipient_id = r.id AND e.final) AS final_at
            FROM messages m JOIN message_recipients r ON r.message_id = m.id
            WHERE m.created_at >= $1
        )
        SELECT provider,
               count(DISTINCT message_id) AS messages,
               count(*) AS recipients,
               count(*) FILTER (WHERE status = 'delivered') AS delivered,
               count(*) FILTER (WHERE final) AS final,
               percentile_cont(0.5) WITHIN GROUP (
                   ORDER BY extract(epoch FROM final_at - created_at)) AS p50_s,
               percentile_cont(0.95) WITHIN GROUP (
                   ORDER BY extract(epoch FROM final_at - created_at)) AS p95_s
        FROM recipients GROUP BY provider
        """,
        since,
    )
    return rows


async def reports_by_status(connection: Connection, since: datetime | None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT e.provider, e.status, count(*) AS n FROM events e"
        " JOIN raw_callbacks c ON c.id = e.raw_id AND c.source = 'callback'"
        " WHERE e.stored_at >= $1 AND e.type = 'message.status' AND NOT e.synthetic"
        " GROUP BY e.provider, e.status",
        since,
    )
    return rows


async def unusable_callbacks(
    connection: Connection, since: datetime | None
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT provider, 'unparsed' AS outcome, count(*) AS n FROM raw_callbacks"
        " WHERE received_at >= $1 AND outcome = 'unparsed' GROUP BY provider"
        " UNION ALL"
        " SELECT provider, 'rejected' AS outcome, count(*) AS n FROM callback_refusals"
        " WHERE received_at >= $1 GROUP BY provider",
        since,
    )
    return rows
