"""Correction runs (migration 0025): the raw callbacks of a window in id order, the events they
gave that still stand, and what a run writes: replaced events, their corrections, recipients
folded again, and the run's own record."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from receiver.storage.callbacks import RawCallback, raw_of_row
from receiver.storage.events import EVENT_COLUMNS
from receiver.storage.pool import Connection
from receiver.storage.values import storable_json

# The event types a normaliser gives: the others (contact.*, provider.health, discrepancies)
# are the hub's, made from these, and never re-derived from a callback.
DERIVED_TYPES = ["message.status", "message.summary", "message.inbound"]

_WINDOW = """
    source = 'callback'
    AND ($1::text IS NULL OR provider = $1)
    AND ($2::timestamptz IS NULL OR received_at >= $2)
    AND received_at < $3
"""


async def window_size(
    connection: Connection, provider: str | None, since: datetime | None, until: datetime
) -> int:
    count: int = await connection.fetchval(
        f"SELECT count(*) FROM raw_callbacks WHERE {_WINDOW}", provider, since, until
    )
    return count


async def window_batch(
    connection: Connection,
    provider: str | None,
    since: datetime | None,
    until: datetime,
    after: uuid.UUID | None,
    limit: int,
) -> list[tuple[RawCallback, str]]:
    """The next raw callbacks of the window after `after`, in id order (ids are time-ordered,
    so this walks the primary key of each partition the window reaches), with their outcome."""
    rows = await connection.fetch(
        "SELECT id, provider, method, path, query, headers, body, remote_addr, received_at,"
        f" outcome FROM raw_callbacks WHERE {_WINDOW}"
        " AND ($4::uuid IS NULL OR id > $4) ORDER BY id LIMIT $5",
        provider,
        since,
        until,
        after,
        limit,
    )
    return [(raw_of_row(row), row["outcome"]) for row in rows]


async def standing_events(
    connection: Connection, raw_ids: Sequence[uuid.UUID], stored_since: datetime
) -> list[asyncpg.Record]:
    """The events of these raw callbacks that no run replaced, with the id their normaliser
    gave them (`natural`) and their recipient's row. An event is stored after its callback was
    received, so partitions older than the batch's first callback are not read."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT {EVENT_COLUMNS}, coalesce(e.natural_id, e.id) AS natural, e.recipient_id,"
        " e.normalizer FROM events e"
        " WHERE e.raw_id = ANY($1::uuid[]) AND e.stored_at >= $2"
        " AND e.replaced_by IS NULL AND e.type = ANY($3::text[])"
        " ORDER BY e.feed_seq",
        list(raw_ids),
        stored_since,
        DERIVED_TYPES,
    )
    return rows


async def known_ids(
    connection: Connection, natural_ids: Sequence[str]
) -> tuple[set[str], set[str]]:
    """Of these normaliser ids: those some row holds as its id (replaced or not), and those an
    event that stands holds (as its id or its natural id)."""
    rows = await connection.fetch(
        "SELECT id, coalesce(natural_id, id) AS natural, replaced_by IS NULL AS standing"
        " FROM events WHERE id = ANY($1::text[]) OR natural_id = ANY($1::text[])",
        list(natural_ids),
    )
    taken = {row["id"] for row in rows}
    standing = {row["natural"] for row in rows if row["standing"]}
    return taken, standing


async def lock_recipients(connection: Connection, recipient_ids: Sequence[int]) -> None:
    """In the order store_events locks them, so a run and a live callback queue, never
    deadlock."""
    await connection.execute(
        "SELECT 1 FROM (SELECT id FROM message_recipients WHERE id = ANY($1::bigint[])"
        " ORDER BY provider, provider_message_id, recipient FOR UPDATE) AS locked",
        list(recipient_ids),
    )


async def recipient_statuses(
    connection: Connection,
    recipient_ids: Sequence[int],
    keys: Sequence[tuple[str, str, str]],
) -> dict[int, str]:
    """The status of these recipients (by row, or by provider, provider's id and handset) as
    they stand before a run changes them."""
    rows = await connection.fetch(
        "SELECT id, status FROM message_recipients WHERE id = ANY($1::bigint[])"
        " OR (provider, provider_message_id, recipient) IN ("
        "  SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))",
        list(recipient_ids),
        [key[0] for key in keys],
        [key[1] for key in keys],
        [key[2] for key in keys],
    )
    return {row["id"]: row["status"] for row in rows}


async def replace_events(
    connection: Connection, event_ids: Sequence[str], run_id: uuid.UUID
) -> None:
    await connection.execute(
        "UPDATE events SET replaced_by = $2 WHERE id = ANY($1::text[]) AND replaced_by IS NULL",
        list(event_ids),
        run_id,
    )


async def store_corrections(
    connection: Connection, events: Sequence[dict[str, Any]]
) -> dict[str, int | None]:
    """The corrected events through store_events (each names its raw callback), and the
    recipient row each one landed on, by event id."""
    await connection.fetch("SELECT * FROM store_events(NULL, $1::jsonb)", storable_json(events))
    rows = await connection.fetch(
        "SELECT id, recipient_id FROM events"
        " WHERE id = ANY($1::text[]) AND txid = pg_current_xact_id()",
        [event["id"] for event in events],
    )
    return {row["id"]: row["recipient_id"] for row in rows}


async def refold(
    connection: Connection,
    recipient_ids: Sequence[int],
    deadlines: Sequence[datetime],
    bumps: Sequence[bool],
) -> list[asyncpg.Record]:
    """These recipients folded again from their events (refold_recipient), in this order: the
    state each was in and is in now (and, for a superseded attempt, its latest one's)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT * FROM refold_recipients($1::bigint[], $2::timestamptz[], $3::boolean[])",
        list(recipient_ids),
        list(deadlines),
        list(bumps),
    )
    return rows


async def mark_normalised(connection: Connection, raw_id: uuid.UUID, events: int) -> None:
    """An unparsed callback a run could read: normalised now, its old error gone."""
    await connection.execute(
        "UPDATE raw_callbacks SET outcome = 'normalised', error = NULL, event_count = $2,"
        " processed_at = now() WHERE id = $1",
        raw_id,
        events,
    )


# --- the runs' record ---------------------------------------------------------------------------

RUN_COLUMNS = (
    "id, mode, state, started_by, started_at, updated_at, finished_at, provider, since, until,"
    " versions, total, examined, cursor, counts, examples, error"
)


async def create_run(
    connection: Connection,
    *,
    run_id: uuid.UUID,
    mode: str,
    started_by: str,
    provider: str | None,
    since: datetime | None,
    until: datetime,
    versions: dict[str, str],
    total: int,
) -> asyncpg.Record:
    row: asyncpg.Record | None = await connection.fetchrow(
        "INSERT INTO correction_runs (id, mode, state, started_by, provider, since, until,"
        " versions, total) VALUES ($1, $2, 'running', $3, $4, $5, $6, $7::jsonb, $8)"
        f" RETURNING {RUN_COLUMNS}",
        run_id,
        mode,
        started_by,
        provider,
        since,
        until,
        json.dumps(versions),
        total,
    )
    assert row is not None  # INSERT ... RETURNING gives its row
    return row


async def record_progress(
    connection: Connection,
    run_id: uuid.UUID,
    *,
    examined: int,
    cursor: uuid.UUID | None,
    counts: dict[str, Any],
    examples: list[dict[str, Any]],
) -> None:
    await connection.execute(
        "UPDATE correction_runs SET examined = $2, cursor = $3, counts = $4::jsonb,"
        " examples = $5::jsonb, updated_at = now() WHERE id = $1",
        run_id,
        examined,
        cursor,
        json.dumps(counts),
        json.dumps(examples),
    )


async def end_run(
    connection: Connection, run_id: uuid.UUID, state: str, error: str | None = None
) -> None:
    await connection.execute(
        "UPDATE correction_runs SET state = $2, error = $3, updated_at = now(),"
        " finished_at = CASE WHEN $2 = 'finished' THEN now() END WHERE id = $1",
        run_id,
        state,
        error,
    )


async def resume_run(
    connection: Connection, run_id: uuid.UUID, versions: dict[str, str]
) -> asyncpg.Record | None:
    """An apply that did not finish, running again (with today's normalisers' versions)."""
    row: asyncpg.Record | None = await connection.fetchrow(
        "UPDATE correction_runs SET state = 'running', error = NULL, updated_at = now(),"
        " versions = $2::jsonb WHERE id = $1 AND mode = 'apply' AND state <> 'finished'"
        f" RETURNING {RUN_COLUMNS}",
        run_id,
        json.dumps(versions),
    )
    return row


async def unfinished_apply(
    connection: Connection, provider: str | None, since: datetime | None, until: datetime | None
) -> asyncpg.Record | None:
    """The latest apply of this window (any `until` when none is given) that did not finish."""
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {RUN_COLUMNS} FROM correction_runs"
        " WHERE mode = 'apply' AND state <> 'finished'"
        " AND provider IS NOT DISTINCT FROM $1 AND since IS NOT DISTINCT FROM $2"
        " AND ($3::timestamptz IS NULL OR until = $3)"
        " ORDER BY started_at DESC LIMIT 1",
        provider,
        since,
        until,
    )
    return row


async def get_run(connection: Connection, run_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {RUN_COLUMNS} FROM correction_runs WHERE id = $1", run_id
    )
    return row


async def list_runs(connection: Connection, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT {RUN_COLUMNS} FROM correction_runs ORDER BY started_at DESC LIMIT $1", limit
    )
    return rows
