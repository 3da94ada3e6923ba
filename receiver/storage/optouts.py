"""The opt-out list (migration 0024): who may not be sent to, by a keyed hash of the number (so
that an erased number stays suppressed), per tenant and sender number or the whole tenant."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from receiver.storage.pool import Connection
from receiver.storage.tenants import Asker

SOURCES = ("keyword", "provider", "api", "import")

COLUMNS = "o.id, o.tenant, o.number, o.sender, o.source, o.event_id, o.created_at"


async def suppressed(
    connection: Connection, message_id: uuid.UUID, numbers: Sequence[str]
) -> set[str]:
    """Which of a message's recipients are on the list for its tenant and sender: one query
    (a lookup of the index by hash per number), whatever their number."""
    rows = await connection.fetch(
        "SELECT suppressed AS number FROM suppressed($1, $2::text[])", message_id, list(numbers)
    )
    return {row["number"] for row in rows}


async def list_opt_outs(
    connection: Connection,
    asker: Asker,
    *,
    number: str | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The asker's entries (the operator: every one), newest first, keyset-paginated."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        SELECT {COLUMNS} FROM opt_outs o
        WHERE {asker.only_own("o.tenant", 1)}
          AND ($2::text IS NULL OR o.number_hash = opt_out_hash($2))
          AND ($3::timestamptz IS NULL OR (o.created_at, o.id) < ($3, $4::bigint))
        ORDER BY o.created_at DESC, o.id DESC
        LIMIT $5
        """,
        asker.tenant_param(),
        number,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return rows


async def add_opt_out(
    connection: Connection, tenant: str, number: str, sender: str | None, source: str
) -> asyncpg.Record:
    """The entry (made, or the one already there)."""
    row: asyncpg.Record | None = await connection.fetchrow(
        """
        WITH made AS (
            INSERT INTO opt_outs (tenant, number, number_hash, sender, source)
            VALUES ($1, $2, opt_out_hash($2), $3, $4)
            ON CONFLICT DO NOTHING
            RETURNING *
        )
        SELECT o.id, o.tenant, o.number, o.sender, o.source, o.event_id, o.created_at
        FROM made o
        UNION ALL
        SELECT o.id, o.tenant, o.number, o.sender, o.source, o.event_id, o.created_at
        FROM opt_outs o
        WHERE o.number_hash = opt_out_hash($2) AND coalesce(o.tenant, '') = $1
          AND coalesce(o.sender, '') = coalesce($3, '')
        LIMIT 1
        """,
        tenant,
        number,
        sender,
        source,
    )
    assert row is not None
    return row


async def remove_opt_out(connection: Connection, entry_id: int, asker: Asker) -> bool:
    """Takes an entry of the asker's off the list (another tenant's is as unknown as none)."""
    removed = await connection.fetchval(
        f"DELETE FROM opt_outs o WHERE o.id = $1 AND {asker.only_own('o.tenant', 2)}"
        " RETURNING o.id",
        entry_id,
        asker.tenant_param(),
    )
    return removed is not None


async def rekey(connection: Connection) -> tuple[int, int]:
    """After the list's key changed: every entry with its number hashed again; returns how many,
    and how many erased entries no longer match (their number is gone)."""
    row = await connection.fetchrow("SELECT rehashed, erased_lost FROM rekey_opt_outs()")
    assert row is not None
    return row["rehashed"], row["erased_lost"]


async def claim_help_replies(connection: Connection, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` HELP/INFO replies waiting for their answer, taken (deleted: an answer is
    sent at most once) with the tenant's answer text; those another instance took are
    skipped."""
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        WITH taken AS (
            SELECT reply_event_id FROM help_replies
            ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED
        )
        DELETE FROM help_replies h USING taken, tenants t
        WHERE h.reply_event_id = taken.reply_event_id AND t.name = h.tenant
        RETURNING h.reply_event_id, h.tenant, h.provider, h.handset, h.ours, t.help_reply,
                  t.enabled
        """,
        limit,
    )
    return rows
