"""Callbacks refused by authentication, as metadata only (callback_refusals): when, from where,
for which provider, why, and the body's size and SHA-256; never the body or the headers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import datetime

import asyncpg

from receiver.storage.pool import Connection


@dataclass(frozen=True, slots=True)
class Refusal:
    id: uuid.UUID
    received_at: datetime
    provider: str
    method: str
    remote_addr: str | None
    reason: str
    status: int  # what it was answered: 401, or 403 for an address not allowed
    size_bytes: int
    body_sha256: bytes


async def insert_refusals(connection: Connection, refusals: Sequence[Refusal]) -> None:
    """All in one statement (a batch arrives together: see ingest.refusals)."""
    columns = list(zip(*(astuple(refusal) for refusal in refusals), strict=True))
    await connection.execute(
        """
        INSERT INTO callback_refusals
            (id, received_at, provider, method, remote_addr, reason, status, size_bytes,
             body_sha256)
        SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::smallint[], $8::integer[], $9::bytea[])
        ON CONFLICT (id) DO NOTHING
        """,
        *columns,
    )


async def list_refusals(
    connection: Connection,
    *,
    provider: str | None,
    after: tuple[datetime, uuid.UUID | None] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Newest first, keyset-paginated on (received_at, id)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        SELECT * FROM callback_refusals
        WHERE ($1::text IS NULL OR provider = $1)
          AND ($2::timestamptz IS NULL OR (received_at, id) < ($2, $3::uuid))
        ORDER BY received_at DESC, id DESC
        LIMIT $4
        """,
        provider,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return rows


async def purge_refusals(connection: Connection, retention_days: int, batch: int = 10_000) -> int:
    """Removes refusals older than the retention, at most `batch` rows a call; returns how
    many."""
    result: str = await connection.execute(
        """
        DELETE FROM callback_refusals WHERE id IN (
            SELECT id FROM callback_refusals
            WHERE received_at < now() - make_interval(days => $1) LIMIT $2
        )
        """,
        retention_days,
        batch,
    )
    return int(result.split()[-1])
