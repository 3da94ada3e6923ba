"""Every SQL statement the receiver runs, in one place (the schema and its functions are in
migrations/)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from normalizers.base import CallbackRequest, to_e164
from normalizers.events import Event

# A connection of its own or one borrowed from the pool: queries run on either.
Connection = asyncpg.Connection | PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class RawCallback:
    id: uuid.UUID
    provider: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]  # as received, repeated names and all
    body: bytes
    remote_addr: str | None
    received_at: datetime

    def as_callback_request(self) -> CallbackRequest:
        headers: dict[str, str] = {}
        for name, value in self.headers:
            headers.setdefault(name, value)  # a repeated header: its first value
        return CallbackRequest(
            method=self.method, path=self.path, query=self.query, headers=headers, body=self.body
        )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    inserted: bool
    message_id: str | None
    sequence: int | None
    recipient_status: str | None


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: str
    events: list[StoredEvent]

    @property
    def new_events(self) -> list[StoredEvent]:
        return [event for event in self.events if event.inserted]


def storable_text(value: Any) -> Any:
    """Postgres text and jsonb hold no NUL character and no lone surrogate; providers' strings
    (and undecodable header bytes) can hold both. Drop the first, replace the second."""
    if isinstance(value, str):
        if value.isascii():
            return value.replace("\x00", "")
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    if isinstance(value, dict):
        return {storable_text(k): storable_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_text(item) for item in value]
    return value


def storable_json(value: Any) -> str:
    """`value` as JSON Postgres takes as jsonb. JSON escapes every NUL and surrogate (`\\u0000`,
    `\\udXXX`), so a text without those needs no cleaning, which is nearly always."""
    text = json.dumps(value, separators=(",", ":"))
    if "\\u0000" in text or "\\ud" in text:
        text = json.dumps(storable_text(value), separators=(",", ":"))
    return text


def _events_json(events: Sequence[Event]) -> str:
    return storable_json([event.to_json() for event in events])


def _ingest_result(rows: Sequence[asyncpg.Record]) -> IngestResult:
    outcome = ""
    stored = []
    for row in rows:
        if row["event_id"] is None:
            outcome = row["raw_outcome"]
            continue
        stored.append(
            StoredEvent(
                event_id=row["event_id"],
                inserted=row["inserted"],
                message_id=str(row["message_id"]) if row["message_id"] else None,
                sequence=row["sequence"],
                recipient_status=row["recipient_status"],
            )
        )
    return IngestResult(outcome=outcome, events=stored)


async def ingest_callback(
    connection: Connection,
    raw: RawCallback,
    *,
    outcome: str,
    error: str | None,
    events: Sequence[Event],
) -> IngestResult:
    rows = await connection.fetch(
        "SELECT * FROM ingest_callback($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11,"
        " $12::jsonb)",
        raw.id,
        raw.provider,
        raw.method,
        storable_text(raw.path),
        storable_text(raw.query),
        storable_json(raw.headers),
        raw.body,
        raw.remote_addr,
        raw.received_at,
        outcome,
        storable_text(error),
        _events_json(events),
    )
    return _ingest_result(rows)


@dataclass(frozen=True, slots=True)
class CallbackToStore:
    raw: RawCallback
    outcome: str
    error: str | None
    events: Sequence[Event]


async def ingest_callbacks(
    connection: Connection, batch: Sequence[CallbackToStore]
) -> dict[uuid.UUID, IngestResult]:
    """Stores several callbacks in one call and one transaction (group commit); the result of
    each, by raw id."""
    raws = [item.raw for item in batch]
    events = []
    for item in batch:
        raw_id = str(item.raw.id)
        for event in item.events:
            serialised = event.to_json()
            serialised["raw_id"] = raw_id  # which callback the event belongs to
            events.append(serialised)
    rows = await connection.fetch(
        "SELECT * FROM ingest_callbacks($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)",
        [raw.id for raw in raws],
        [raw.provider for raw in raws],
        [raw.method for raw in raws],
        [storable_text(raw.path) for raw in raws],
        [storable_text(raw.query) for raw in raws],
        [storable_json(raw.headers) for raw in raws],
        [raw.body for raw in raws],
        [raw.remote_addr for raw in raws],
        [raw.received_at for raw in raws],
        [item.outcome for item in batch],
        [storable_text(item.error) for item in batch],
        storable_json(events),
    )
    by_raw: dict[uuid.UUID, list[asyncpg.Record]] = {raw.id: [] for raw in raws}
    for row in rows:
        by_raw[row["raw_id"]].append(row)
    return {raw_id: _ingest_result(rows_of_raw) for raw_id, rows_of_raw in by_raw.items()}


async def ingest_events(
    connection: Connection,
    raw_id: uuid.UUID,
    *,
    outcome: str,
    error: str | None,
    events: Sequence[Event],
) -> IngestResult:
    rows = await connection.fetch(
        "SELECT * FROM ingest_events($1, $2, $3, $4::jsonb)",
        raw_id,
        outcome,
        storable_text(error),
        _events_json(events),
    )
    return _ingest_result(rows)


async def unparsed_ids(
    connection: Connection, provider: str | None, after: uuid.UUID | None, limit: int
) -> list[uuid.UUID]:
    """The next unparsed raw callbacks, in id order after `after`."""
    rows = await connection.fetch(
        """
        SELECT id FROM raw_callbacks
        WHERE outcome = 'unparsed'
          AND ($1::text IS NULL OR provider = $1)
          AND ($2::uuid IS NULL OR id > $2)
        ORDER BY id
        LIMIT $3
        """,
        provider,
        after,
        limit,
    )
    return [row["id"] for row in rows]


async def unparsed_callback(
    connection: Connection, raw_id: uuid.UUID, *, lock: bool
) -> RawCallback | None:
    """One raw callback if still unparsed; with `lock`, held for this transaction (None when
    another run holds it)."""
    row = await connection.fetchrow(
        "SELECT id, provider, method, path, query, headers, body, remote_addr, received_at"
        " FROM raw_callbacks WHERE id = $1 AND outcome = 'unparsed'"
        + (" FOR UPDATE SKIP LOCKED" if lock else ""),
        raw_id,
    )
    if row is None:
        return None
    headers = json.loads(row["headers"])
    return RawCallback(
        id=row["id"],
        provider=row["provider"],
        method=row["method"],
        path=row["path"],
        query=row["query"],
        # Rows stored before headers were kept as pairs hold an object.
        headers=list(headers.items()) if isinstance(headers, dict) else [tuple(h) for h in headers],
        body=bytes(row["body"]),
        remote_addr=row["remote_addr"],
        received_at=row["received_at"],
    )


async def existing_event_ids(connection: Connection, ids: Sequence[str]) -> set[str]:
    rows = await connection.fetch("SELECT id FROM events WHERE id = ANY($1::text[])", list(ids))
    return {row["id"] for row in rows}


async def set_raw_error(connection: Connection, raw_id: uuid.UUID, error: str) -> None:
    await connection.execute(
        "UPDATE raw_callbacks SET error = $2, processed_at = now() WHERE id = $1",
        raw_id,
        storable_text(error),
    )


async def attach_orphans(
    connection: Connection,
    message_id: uuid.UUID,
    provider: str,
    provider_message_id: str,
    recipient: str | None,
) -> int:
    """Link the reports that arrived before the message was known; returns the recipient row."""
    row_id: int = await connection.fetchval(
        "SELECT attach_orphans($1, $2, $3, $4)",
        message_id,
        provider,
        provider_message_id,
        recipient,
    )
    return row_id


async def insert_message(
    connection: Connection,
    message_id: uuid.UUID,
    provider: str,
    *,
    provider_message_id: str | None = None,
    sender: str | None = None,
    body: str | None = None,
    client_ref: str | None = None,
) -> None:
    await connection.execute(
        """
        INSERT INTO messages (id, provider, provider_message_id, sender, body, client_ref)
        VALUES ($1, $2, $3, $4, $5, $6)
        """,
        message_id,
        provider,
        provider_message_id,
        sender,
        body,
        client_ref,
    )


# --- sending -----------------------------------------------------------------------------------


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


def pending_id(message_id: uuid.UUID) -> str:
    """The provisional provider id of a message's recipients until the provider names its own."""
    return f"pending:{message_id}"


async def create_message(
    connection: Connection,
    message_id: uuid.UUID,
    provider: str,
    recipients: Sequence[str],
    *,
    sender: str | None,
    body: str,
    client_ref: str | None,
    segments: int,
    encoding: str,
    request: Any,
    send_at: datetime | None,
    expires_at: datetime | None,
    idempotency_key: str | None,
) -> None:
    """The message and its recipients, stored before the provider is called."""
    async with connection.transaction():
        await connection.execute(
            """
            INSERT INTO messages (id, provider, sender, body, client_ref, segments, encoding,
                                  request, send_at, expires_at, idempotency_key)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)
            """,
            message_id,
            provider,
            to_e164(sender),  # as reports will name it, so that replies find their message
            body,
            client_ref,
            segments,
            encoding,
            json.dumps(request),
            send_at,
            expires_at,
            idempotency_key,
        )
        await connection.executemany(
            """
            INSERT INTO message_recipients
                (message_id, provider, provider_message_id, recipient, status, final, sequence,
                 segments)
            VALUES ($1, $2, $3, $4, 'unknown', false, 0, $5)
            """,
            [(message_id, provider, pending_id(message_id), to, segments) for to in recipients],
        )


async def adopt_recipient(
    connection: Connection,
    message_id: uuid.UUID,
    provider: str,
    provider_message_id: str,
    recipient: str,
) -> int | None:
    """The recipient row now under the provider's id; None if that id is another message's."""
    row_id: int | None = await connection.fetchval(
        "SELECT adopt_recipient($1, $2, $3, $4, $5)",
        message_id,
        provider,
        pending_id(message_id),
        provider_message_id,
        recipient,
    )
    return row_id


async def register_parts(
    connection: Connection,
    provider: str,
    provider_message_id: str,
    recipient: str,
    part_ids: Sequence[str],
) -> None:
    await connection.execute(
        "SELECT register_parts($1, $2, $3, $4)",
        provider,
        provider_message_id,
        recipient,
        list(part_ids),
    )


async def mark_send_answer(connection: Connection, raw_id: uuid.UUID) -> None:
    await connection.execute(
        "UPDATE raw_callbacks SET source = 'send_answer' WHERE id = $1", raw_id
    )


async def set_provider_segments(
    connection: Connection, message_id: uuid.UUID, segments: int
) -> None:
    await connection.execute(
        "UPDATE messages SET provider_segments = $2 WHERE id = $1", message_id, segments
    )


async def recipients_of(connection: Connection, message_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        SELECT r.recipient, r.status, r.final, r.failure_kind, r.segments,
               CASE WHEN r.provider_message_id LIKE 'pending:%' THEN NULL
                    ELSE r.provider_message_id END AS provider_message_id,
               e.error_code, e.error_message
        FROM message_recipients r
        LEFT JOIN LATERAL (
            SELECT error_code, error_message FROM events
            WHERE recipient_id = r.id AND error_code IS NOT NULL
            ORDER BY sequence DESC LIMIT 1
        ) e ON true
        WHERE r.message_id = $1
        ORDER BY r.id
        """,
        message_id,
    )
    return rows
