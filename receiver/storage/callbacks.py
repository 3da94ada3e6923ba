"""The record of every provider request: raw callbacks stored with their events in one call
(one transaction for a batch: group commit), the fallback that keeps a callback whose events the
database refuses, and what reprocessing and the send path read and mark. The schema and its
functions are in migrations/ (current state: migrations/schema.sql)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog

from normalizers.base import CallbackRequest
from normalizers.events import FINAL_STATUSES, Event
from receiver.metrics import EVENTS
from receiver.redaction import is_secret_name
from receiver.storage.errors import DatabaseUnavailable, is_data_refusal, is_database_unavailable
from receiver.storage.pool import Connection
from receiver.storage.values import storable_json, storable_text

log = structlog.get_logger("receiver.storage.callbacks")

# Outcomes of a raw callback (raw_callbacks.outcome); `duplicate` is decided by storage.
NORMALISED = "normalised"
UNPARSED = "unparsed"
DUPLICATE = "duplicate"
OUTCOMES = (NORMALISED, DUPLICATE, UNPARSED)  # a refused callback is not one (storage.refusals)

# The longest reason kept on a raw callback (raw_callbacks.error).
MAX_ERROR_LENGTH = 2000


def error_text(reason: str) -> str:
    """A reason as kept on the raw row: bounded."""
    return reason[:MAX_ERROR_LENGTH]


def headers_at_rest(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers as stored: a credential (Authorization, a signature, a cookie, an API key:
    every secret-named header) is never kept; its name and a short hash of its value are, so
    that one can see it was there, and tell two apart, without being able to use it."""
    return [
        (name, _fingerprint(value) if is_secret_name(name) else value) for name, value in headers
    ]


def _fingerprint(value: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return f"sha256:{digest[:12]}"


def received_now() -> datetime:
    """The receipt time at the precision events carry (milliseconds), so the raw row and its
    events hold the same instant."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


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


def stored_form(event: Event, normalizer: str | None = None) -> dict[str, Any]:
    """What store_events reads of an event: its schema-v1 fields and the version of the
    normaliser that made it (the event's own, else `normalizer`)."""
    serialised = event.to_json()
    version = event.normalizer or normalizer
    if version is not None:
        serialised["normalizer"] = version
    return serialised


def _events_json(events: Sequence[Event], normalizer: str | None = None) -> str:
    return storable_json([stored_form(event, normalizer) for event in events])


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
    normalizer: str | None = None,
) -> IngestResult:
    rows = await connection.fetch(
        "SELECT * FROM ingest_callback($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11,"
        " $12::jsonb)",
        raw.id,
        raw.provider,
        raw.method,
        storable_text(raw.path),
        storable_text(raw.query),
        storable_json(headers_at_rest(raw.headers)),
        raw.body,
        raw.remote_addr,
        raw.received_at,
        outcome,
        storable_text(error),
        _events_json(events, normalizer),
    )
    return _ingest_result(rows)


@dataclass(frozen=True, slots=True)
class CallbackToStore:
    raw: RawCallback
    outcome: str
    error: str | None
    events: Sequence[Event]
    normalizer: str | None = None  # the version of the normaliser that gave the events


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
            serialised = stored_form(event, item.normalizer)
            serialised["raw_id"] = raw_id  # which callback the event belongs to
            events.append(serialised)
    rows = await connection.fetch(
        "SELECT * FROM ingest_callbacks($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)",
        [raw.id for raw in raws],
        [raw.provider for raw in raws],
        [raw.method for raw in raws],
        [storable_text(raw.path) for raw in raws],
        [storable_text(raw.query) for raw in raws],
        [storable_json(headers_at_rest(raw.headers)) for raw in raws],
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
    normalizer: str | None = None,
) -> IngestResult:
    rows = await connection.fetch(
        "SELECT * FROM ingest_events($1, $2, $3, $4::jsonb)",
        raw_id,
        outcome,
        storable_text(error),
        _events_json(events, normalizer),
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
    return raw_of_row(row)


def raw_of_row(row: asyncpg.Record) -> RawCallback:
    """A raw callback from its row (id, provider, method, path, query, headers, body,
    remote_addr, received_at)."""
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


async def mark_send_answer(connection: Connection, raw_id: uuid.UUID) -> None:
    await connection.execute(
        "UPDATE raw_callbacks SET source = 'send_answer' WHERE id = $1", raw_id
    )


async def store_callback(
    connection: Connection,
    raw: RawCallback,
    *,
    outcome: str,
    error: str | None,
    events: Sequence[Event],
    normalizer: str | None = None,
) -> tuple[IngestResult, str | None]:
    """Store the raw callback with its events in one transaction; returns what was stored and
    the error kept on the raw row. Should the events be refused by the database (a value out of
    range, say), the raw callback is stored alone as `unparsed`, so that it is never lost, and
    `reprocess` takes it again once the normaliser is fixed."""
    try:
        result = await ingest_callback(
            connection, raw, outcome=outcome, error=error, events=events, normalizer=normalizer
        )
    except asyncpg.PostgresError as refused:
        if not is_data_refusal(refused):
            raise
        reason = describe_storage_error(refused)
        log.error("events_refused_by_storage", raw_id=str(raw.id), error=reason)
        try:
            fallback = await ingest_callback(
                connection, raw, outcome=UNPARSED, error=reason, events=[]
            )
        except Exception as fallback_error:
            if is_database_unavailable(fallback_error):
                raise
            # Not even the raw row alone: answer "retry later", never a 500.
            log.exception("raw_callback_refused_by_storage", raw_id=str(raw.id))
            raise DatabaseUnavailable("the callback could not be stored, retry later") from None
        return fallback, reason
    report_stored(raw.provider, events, result)
    return result, error


async def store_events_alone(connection: Connection, events: Sequence[Event]) -> IngestResult:
    """Events no request brought (the hub's own, synthetic): through the same state machine,
    with no raw callback."""
    rows = await connection.fetch(
        "SELECT * FROM store_events(NULL, $1::jsonb)", _events_json(events)
    )
    return _ingest_result(rows)


def report_stored(provider: str, events: Sequence[Event], result: IngestResult) -> None:
    """What stored events tell the operator, whatever stored them (callback, send answer,
    reprocess): every new one in /metrics, and a log line for a conflicting final report."""
    statuses = {event.id: event.status for event in events}
    for stored in result.new_events:
        reported = statuses.get(stored.event_id)
        EVENTS.labels(provider, str(reported or "unknown")).inc()
        current = stored.recipient_status
        if reported in FINAL_STATUSES and current in FINAL_STATUSES and current != reported:
            # A second, different final report is kept in history but changes nothing.
            log.warning(
                "conflicting_final_report",
                event_id=stored.event_id,
                reported=str(reported),
                kept=current,
            )


def describe_storage_error(error: asyncpg.PostgresError) -> str:
    return error_text(f"storage error: {type(error).__name__}: {error}")


# --- the query API -----------------------------------------------------------------------------

RAW_SUMMARY_COLUMNS = (
    "id, provider, source, method, path, outcome, error, event_count, remote_addr, received_at"
)


async def list_raw_callbacks(
    connection: Connection,
    *,
    outcome: str | None,
    provider: str | None,
    after: tuple[datetime, uuid.UUID | None] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Newest first, keyset-paginated on (received_at, id)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        SELECT {RAW_SUMMARY_COLUMNS}
        FROM raw_callbacks
        WHERE ($1::text IS NULL OR outcome = $1)
          AND ($2::text IS NULL OR provider = $2)
          AND ($3::timestamptz IS NULL OR (received_at, id) < ($3, $4::uuid))
        ORDER BY received_at DESC, id DESC
        LIMIT $5
        """,
        outcome,
        provider,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
    return rows


async def raw_callback(connection: Connection, raw_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        "SELECT * FROM raw_callbacks WHERE id = $1", raw_id
    )
    return row
