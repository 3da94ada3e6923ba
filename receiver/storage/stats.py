"""Statistics over a window, per provider (and per destination country): messages, delivery
rate, final-report latency, synthetic expiries, suspiciously fast deliveries, reports by status,
and callbacks that were unparsed or refused (rejected)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from receiver.storage.pool import Connection
from receiver.storage.tenants import Asker

# What message statistics are grouped by: a fixed choice, never caller text in the SQL.
GROUPINGS = {"provider": "m.provider", "country": "coalesce(r.country, 'unknown')"}


async def message_stats(
    connection: Connection,
    since: datetime | None,
    until: datetime | None,
    fast_under_s: float,
    asker: Asker,
    by: str = "provider",
) -> list[asyncpg.Record]:
    """Per provider (or destination country) for the messages created in the window: counts,
    delivery rate, final-report latency (real reports only), recipients ended by a synthetic
    expiry, and deliveries reported sooner than `fast_under_s` after sending (fake DLRs)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        WITH recipients AS (
            SELECT {GROUPINGS[by]} AS key, m.id AS message_id, r.id, r.status, r.final,
                   r.synthetic_final,
                   coalesce(m.send_at, m.created_at) AS created_at,
                   (SELECT min(e.received_at) FROM events e
                    JOIN raw_callbacks c ON c.id = e.raw_id AND c.source = 'callback'
                    WHERE e.recipient_id = r.id AND e.final AND e.replaced_by IS NULL)
                       AS final_at,
                   -- Sent again (routing) and delivered by two attempts: counted once, on
                   -- its latest attempt.
                   CASE WHEN r.attempt > 1 AND NOT r.superseded THEN (
                       SELECT count(DISTINCT e.recipient_id) FROM message_recipients o
                       JOIN events e ON e.recipient_id = o.id
                       WHERE o.message_id = r.message_id AND o.recipient = r.recipient
                         AND e.status = 'delivered' AND NOT e.synthetic
                         AND e.replaced_by IS NULL) >= 2
                   ELSE false END AS double_delivered,
                   -- Implausible reports: delivered to a number that cannot exist (as any
                   -- attempt's row knew it), or a provider's report dated more than a minute
                   -- (clocks differ) before the message was sent.
                   r.status = 'delivered' AND (r.number_valid = false OR (r.attempt > 1 AND EXISTS (
                       SELECT 1 FROM message_recipients o
                       WHERE o.message_id = r.message_id AND o.recipient = r.recipient
                         AND o.number_valid = false))) AS impossible_delivery,
                   EXISTS (SELECT 1 FROM events e
                           WHERE e.recipient_id = r.id AND e.type = 'message.status'
                             AND e.occurred_at_source = 'provider' AND e.replaced_by IS NULL
                             AND e.occurred_at < coalesce(m.dispatched_at, m.send_at, m.created_at)
                                                 - interval '1 minute') AS dated_before_send
            FROM messages m JOIN message_recipients r ON r.message_id = m.id
            WHERE m.created_at >= $1 AND ($2::timestamptz IS NULL OR m.created_at < $2)
              AND {asker.only_own("m.tenant", 4)}
        )
        SELECT key,
               count(DISTINCT message_id) AS messages,
               count(*) AS recipients,
               count(*) FILTER (WHERE status = 'delivered') AS delivered,
               count(*) FILTER (WHERE final) AS final,
               count(*) FILTER (WHERE synthetic_final AND status = 'expired')
                   AS synthetic_expired,
               count(*) FILTER (WHERE double_delivered) AS double_deliveries,
               count(*) FILTER (WHERE impossible_delivery) AS impossible_deliveries,
               count(*) FILTER (WHERE dated_before_send) AS reports_before_send,
               count(*) FILTER (WHERE status = 'delivered'
                                AND final_at - created_at < make_interval(secs => $3))
                   AS fast_deliveries,
               percentile_cont(0.5) WITHIN GROUP (
                   ORDER BY extract(epoch FROM final_at - created_at)) AS p50_s,
               percentile_cont(0.95) WITHIN GROUP (
                   ORDER BY extract(epoch FROM final_at - created_at)) AS p95_s
        FROM recipients GROUP BY key
        """,
        since,
        until,
        fast_under_s,
        asker.tenant_param(),
    )
    return rows


async def reports_by_status(
    connection: Connection, since: datetime | None, until: datetime | None, asker: Asker
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT e.provider, e.status, count(*) AS n FROM events e"
        " JOIN raw_callbacks c ON c.id = e.raw_id AND c.source = 'callback'"
        " WHERE e.stored_at >= $1 AND ($2::timestamptz IS NULL OR e.stored_at < $2)"
        f" AND e.type = 'message.status' AND NOT e.synthetic AND {asker.only_own('e.tenant', 3)}"
        " AND e.replaced_by IS NULL"
        " GROUP BY e.provider, e.status",
        since,
        until,
        asker.tenant_param(),
    )
    return rows


async def unusable_callbacks(
    connection: Connection, since: datetime | None, until: datetime | None
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT provider, 'unparsed' AS outcome, count(*) AS n FROM raw_callbacks"
        " WHERE received_at >= $1 AND ($2::timestamptz IS NULL OR received_at < $2)"
        " AND outcome = 'unparsed' GROUP BY provider"
        " UNION ALL"
        " SELECT provider, 'rejected' AS outcome, count(*) AS n FROM callback_refusals"
        " WHERE received_at >= $1 AND ($2::timestamptz IS NULL OR received_at < $2)"
        " GROUP BY provider",
        since,
        until,
    )
    return rows


async def daily_stats(
    connection: Connection, since: datetime, asker: Asker
) -> list[asyncpg.Record]:
    """Per provider and UTC day of sending since `since`: recipients, delivered, final, the
    median seconds from sending to a real final status (to the recipient's last update: cheap
    enough for a page)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        SELECT m.provider, date_trunc('day', m.created_at AT TIME ZONE 'UTC') AS day,
               count(*) AS recipients,
               count(*) FILTER (WHERE r.status = 'delivered') AS delivered,
               count(*) FILTER (WHERE r.final) AS final,
               percentile_cont(0.5) WITHIN GROUP (
                   ORDER BY extract(epoch FROM r.updated_at - coalesce(m.send_at, m.created_at)))
                   FILTER (WHERE r.final AND NOT r.synthetic_final) AS p50_s
        FROM messages m JOIN message_recipients r ON r.message_id = m.id
        WHERE m.created_at >= $1 AND {asker.only_own("m.tenant", 2)}
        GROUP BY 1, 2
        """,
        since,
        asker.tenant_param(),
    )
    return rows


async def daily_inbound(
    connection: Connection, since: datetime, asker: Asker
) -> list[asyncpg.Record]:
    """The asker's inbound replies per provider and UTC day since `since`."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT provider, date_trunc('day', stored_at AT TIME ZONE 'UTC') AS day, count(*) AS n"
        " FROM events WHERE type = 'message.inbound' AND stored_at >= $1"
        f" AND {asker.only_own('tenant', 2)} GROUP BY 1, 2",
        since,
        asker.tenant_param(),
    )
    return rows
