"""Reading stored events: the schema-v1 event from its row, the commit-ordered feed, a message's
timeline, and inbound replies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg

from normalizers.events import EVENT_V1_FIELDS, rfc3339
from receiver.storage.pool import Connection
from receiver.storage.tenants import Asker

# The schema-v1 event's columns of `events e`: named as its fields.
EVENT_COLUMNS = ", ".join(f"e.{name}" for name in EVENT_V1_FIELDS)


def _text(value: Any) -> str | None:
    return str(value) if value is not None else None


def _json(value: Any) -> Any:
    return json.loads(value) if value else None


def _moment(value: datetime) -> str:
    return rfc3339(value)


# How a column's value becomes the field's JSON value, where it is not the value itself.
_FROM_COLUMN: dict[str, Callable[[Any], Any]] = {
    "message_id": lambda value: str(value) if value else None,
    "occurred_at": _moment,
    "received_at": _moment,
    "price": _json,
    "counts": _json,
    "details": _json,
    "correction": _json,
    "raw_id": _text,
}


def event_json(row: asyncpg.Record) -> dict[str, Any]:
    """The schema-v1 event of a row holding EVENT_COLUMNS."""
    return {
        name: _FROM_COLUMN[name](row[name]) if name in _FROM_COLUMN else row[name]
        for name in EVENT_V1_FIELDS
    }


async def feed_now(connection: Connection) -> str:
    """A feed cursor before every event not yet visible to every transaction, after all the
    others: a stream started from it sees only what is stored from now on."""
    xmin: int = await connection.fetchval(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
    )
    # The largest sequence a cursor writes (18 digits, as the feed's cursor schema allows):
    # past any sequence a transaction will ever have.
    return f"{xmin - 1}.{10**18 - 1}"


async def feed(
    connection: Connection,
    after: tuple[int, int] | None,
    limit: int,
    event_type: str | None,
    provider: str | None,
    asker: Asker,
) -> list[asyncpg.Record]:
    """The asker's events in commit-safe order after the cursor (txid, feed_seq): only those of
    transactions older than every one still running, so none can appear behind it later."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        SELECT e.txid::text::bigint AS txid, e.feed_seq, {EVENT_COLUMNS}
        FROM events e
        WHERE {asker.only_own("e.tenant", 6)}
          AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
          AND (e.txid, e.feed_seq) > (coalesce($1::bigint, 0)::text::xid8, coalesce($2::bigint, 0))
          AND ($4::text IS NULL OR e.type = $4)
          AND ($5::text IS NULL OR e.provider = $5)
        ORDER BY e.txid, e.feed_seq
        LIMIT $3
        """,
        after[0] if after else None,
        after[1] if after else None,
        limit,
        event_type,
        provider,
        asker.tenant_param(),
    )
    return rows


async def timeline_of_message(
    connection: Connection, message_id: uuid.UUID, asker: Asker
) -> list[dict[str, Any]]:
    rows = await connection.fetch(
        f"SELECT {EVENT_COLUMNS} FROM events e"
        f" WHERE e.message_id = $1 AND {asker.only_own('e.tenant', 2)}"
        " AND e.replaced_by IS NULL"
        " ORDER BY e.occurred_at, e.feed_seq",
        message_id,
        asker.tenant_param(),
    )
    return [event_json(row) for row in rows]


async def timeline_of_provider_id(
    connection: Connection, provider: str, provider_message_id: str, asker: Asker
) -> list[dict[str, Any]]:
    rows = await connection.fetch(
        f"SELECT {EVENT_COLUMNS} FROM events e"
        " WHERE e.provider = $1 AND e.provider_message_id = $2"
        f" AND {asker.only_own('e.tenant', 3)} AND e.replaced_by IS NULL"
        " ORDER BY e.occurred_at, e.feed_seq",
        provider,
        provider_message_id,
        asker.tenant_param(),
    )
    return [event_json(row) for row in rows]


async def events_of_raw(connection: Connection, raw_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every event a raw callback gave (its owner decides who may see them: `raw_owners`)."""
    rows = await connection.fetch(
        f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.raw_id = $1 ORDER BY e.feed_seq", raw_id
    )
    return [event_json(row) for row in rows]


async def inbound(
    connection: Connection,
    *,
    provider: str | None,
    handset: str | None,
    ours: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
    asker: Asker,
) -> list[asyncpg.Record]:
    """The asker's inbound replies, newest first, each with the message it most likely
    answers: the latest one of the reply's tenant (any, for a reply of nobody's) sent to that
    handset from the number it wrote to."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        SELECT {EVENT_COLUMNS}, e.stored_at, (
            SELECT m.id FROM messages m
            JOIN message_recipients r ON r.message_id = m.id
            WHERE r.recipient = e.sender AND m.sender = e.recipient
              AND m.created_at <= e.received_at
              AND (e.tenant IS NULL OR m.tenant = e.tenant)
            ORDER BY m.created_at DESC, m.id DESC LIMIT 1
        ) AS in_reply_to
        FROM events e
        WHERE e.type = 'message.inbound' AND {asker.only_own("e.tenant", 9)}
          AND ($1::text IS NULL OR e.provider = $1)
          AND ($2::text IS NULL OR e.sender = $2)
          AND ($3::text IS NULL OR e.recipient = $3)
          AND ($4::timestamptz IS NULL OR e.occurred_at >= $4)
          AND ($5::timestamptz IS NULL OR e.occurred_at < $5)
          AND ($6::timestamptz IS NULL OR (e.stored_at, e.id) < ($6, $7::text))
        ORDER BY e.stored_at DESC, e.id DESC
        LIMIT $8
        """,
        provider,
        handset,
        ours,
        since,
        until,
        after[0] if after else None,
        after[1] if after else None,
        limit,
        asker.tenant_param(),
    )
    return rows


async def raw_owners(connection: Connection, raw_id: uuid.UUID) -> list[str | None]:
    """The tenants of the events a raw callback gave (None for an event of nobody's)."""
    rows = await connection.fetch(
        "SELECT DISTINCT tenant FROM events WHERE raw_id = $1 ORDER BY tenant", raw_id
    )
    return [row["tenant"] for row in rows]


async def replies_since(
    connection: Connection, providers: list[str], since: datetime
) -> list[asyncpg.Record]:
    """Inbound replies to these providers' numbers received since a time (the demo's)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT provider, sender, text FROM events WHERE type = 'message.inbound'"
        " AND provider = ANY($1::text[]) AND received_at >= $2 ORDER BY provider",
        providers,
        since,
    )
    return rows
