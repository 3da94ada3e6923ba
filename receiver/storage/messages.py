"""Messages and their recipients: stored before the provider is called, given the provider's
ids from its answer, and read back for the query API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from normalizers.base import number_facts, to_e164
from receiver.storage.pool import Connection
from receiver.storage.tenants import Asker

# The provisional provider id of a message's recipients until the provider names its own.
PENDING_PREFIX = "pending:"


def pending_id(message_id: uuid.UUID) -> str:
    return f"{PENDING_PREFIX}{message_id}"


def is_pending(provider_message_id: str) -> bool:
    return provider_message_id.startswith(PENDING_PREFIX)


async def create_message(
    connection: Connection,
    message_id: uuid.UUID,
    provider: str,
    recipients: Sequence[str],
    *,
    tenant: str,
    sender: str | None,
    body: str,
    client_ref: str | None,
    segments: int,
    encoding: str,
    request: Any,
    send_at: datetime | None,
    expires_at: datetime | None,
    idempotency_key: str | None,
    deadline: datetime,
    dispatch_at: datetime | None = None,
    countries: Mapping[str, str | None] | None = None,
    providers: Mapping[str, str] | None = None,
    deadlines: Mapping[str, datetime] | None = None,
    routing: Any = None,
    redeliver: Mapping[str, Redelivery] | None = None,
) -> set[str]:
    """The message of `tenant` and its recipients, stored before the provider is called; a
    recipient with no final status by `deadline` is expired by the silence sweep. With
    `dispatch_at` the hub sends it then (the provider cannot schedule): its recipients are
    `scheduled` until. A routed message's recipients each have their first provider
    (`providers`, with its `deadlines`), and `routing` says how they were chosen. Returns the
    recipients on the opt-out list for this tenant and sender."""
    status = "scheduled" if dispatch_at is not None else "unknown"
    first_of = providers or {}
    deadline_of = deadlines or {}
    redeliver_of = redeliver or {}
    async with connection.transaction():
        await connection.execute(
            """
            INSERT INTO messages (id, provider, sender, body, client_ref, segments, encoding,
                                  request, send_at, expires_at, idempotency_key, dispatch_at,
                                  tenant, routing)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, $12, $13, $14::jsonb)
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
            dispatch_at,
            tenant,
            json.dumps(routing) if routing is not None else None,
        )
        # One statement for every recipient, which also says which are on the opt-out list
        # for this tenant and sender (the send's one lookup of it, migration 0024).
        rows = await connection.fetch(
            """
            WITH pads AS (SELECT * FROM opt_out_pads())
            INSERT INTO message_recipients AS r
                (message_id, provider, provider_message_id, recipient, status, final, sequence,
                 segments, deadline, country, tenant, redeliver_until, redeliver_on,
                 number_valid)
            SELECT $1, given.provider, $2, given.recipient, $3, false, 0, $4, given.deadline,
                   given.country, $5, given.redeliver_until,
                   string_to_array(given.redeliver_on, ','), given.valid
            FROM unnest($6::text[], $7::text[], $8::timestamptz[], $9::text[],
                        $10::timestamptz[], $11::text[], $13::boolean[])
                 AS given(recipient, provider, deadline, country, redeliver_until, redeliver_on,
                          valid)
            RETURNING r.recipient, EXISTS (
                SELECT 1 FROM opt_outs o, pads
                WHERE o.number_hash = hmac_with(pads.inner_pad, pads.outer_pad, r.recipient)
                  AND (o.tenant = $5 OR o.tenant IS NULL)
                  AND (o.sender IS NULL OR o.sender = $12)) AS suppressed
            """,
            message_id,
            pending_id(message_id),
            status,
            segments,
            tenant,
            list(recipients),
            [first_of.get(to, provider) for to in recipients],
            [deadline_of.get(to, deadline) for to in recipients],
            [(countries or {}).get(to) for to in recipients],
            [redeliver_of[to].until if to in redeliver_of else None for to in recipients],
            [",".join(redeliver_of[to].on) if to in redeliver_of else None for to in recipients],
            to_e164(sender),
            [number_facts(to)[1] for to in recipients],  # asked of each already: cached
        )
    return {row["recipient"] for row in rows if row["suppressed"]}


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


@dataclass(frozen=True, slots=True)
class Redelivery:
    """An attempt's redelivery after the fact: until when it may happen, on which statuses."""

    until: datetime
    on: tuple[str, ...]


async def fail_over(
    connection: Connection,
    message_id: uuid.UUID,
    recipients: Sequence[str],
    provider: str,
    deadline: datetime,
    redeliver: Redelivery | None = None,
) -> list[str]:
    """The recipients' next attempt, over `provider` (see migration 0023); returns those given
    one (never a second attempt over the same provider)."""
    rows = await connection.fetch(
        "SELECT fail_over($1, $2::text[], $3, $4, $5, $6::text[]) AS recipient",
        message_id,
        list(recipients),
        provider,
        deadline,
        redeliver.until if redeliver else None,
        list(redeliver.on) if redeliver else None,
    )
    return [row["recipient"] for row in rows]


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


async def claim_due(connection: Connection, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` messages the hub holds whose send time has come, oldest first, taken for
    sending: dispatch_at cleared and dispatched_at set (committed before the provider is
    called: a message is never sent twice), their recipients back to `unknown` so that the
    provider's answer moves them. Those another instance holds are skipped, and those of a
    disabled tenant stay held until it is enabled again."""
    async with connection.transaction():
        rows: list[asyncpg.Record] = await connection.fetch(
            """
            WITH due AS (
                SELECT id FROM messages m
                WHERE dispatch_at IS NOT NULL AND dispatch_at <= now()
                  AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.name = m.tenant AND NOT t.enabled)
                ORDER BY dispatch_at
                LIMIT $1
                FOR UPDATE SKIP LOCKED
            )
            UPDATE messages m SET dispatch_at = NULL, dispatched_at = now()
            FROM due WHERE m.id = due.id
            RETURNING m.id, m.provider, m.request, m.expires_at, m.routing
            """,
            limit,
        )
        await connection.execute(
            "UPDATE message_recipients SET status = 'unknown'"
            " WHERE message_id = ANY($1::uuid[]) AND status = 'scheduled' AND NOT final",
            [row["id"] for row in rows],
        )
    return rows


async def cancel_scheduled(connection: Connection, message_id: uuid.UUID, asker: Asker) -> bool:
    """Takes a message of the asker's that the hub holds out of the schedule (cancelled_at);
    False when it is not held (sent, being sent, cancelled already, or scheduled by its
    provider)."""
    cancelled = await connection.fetchval(
        "UPDATE messages m SET dispatch_at = NULL, cancelled_at = now()"
        f" WHERE id = $1 AND dispatch_at IS NOT NULL AND {asker.only_own('m.tenant', 2)}"
        " RETURNING id",
        message_id,
        asker.tenant_param(),
    )
    return cancelled is not None


async def pending_recipients(connection: Connection, message_id: uuid.UUID) -> list[asyncpg.Record]:
    """The recipients of a message not yet final, with their keys (for the hub's own events)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT provider, provider_message_id, recipient FROM message_recipients"
        " WHERE message_id = $1 AND NOT final ORDER BY provider_message_id, recipient",
        message_id,
    )
    return rows


async def set_provider_counts(
    connection: Connection, message_id: uuid.UUID, segments: int | None, recipients: int | None
) -> None:
    """What the provider says it will bill: segments, and recipients where it says."""
    await connection.execute(
        "UPDATE messages SET provider_segments = $2, provider_recipients = $3 WHERE id = $1",
        message_id,
        segments,
        recipients,
    )


async def recipients_as_answered(
    connection: Connection, message_id: uuid.UUID
) -> list[asyncpg.Record]:
    """A message's recipients as the send API answers them, each with its latest error."""
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        SELECT r.recipient, r.status, r.final, r.failure_kind, r.segments, r.provider,
               r.attempt, r.superseded,
               CASE WHEN r.provider_message_id LIKE 'pending:%' THEN NULL
                    ELSE r.provider_message_id END AS provider_message_id,
               e.error_code, e.error_message
        FROM message_recipients r
        LEFT JOIN LATERAL (
            SELECT error_code, error_message FROM events
            WHERE recipient_id = r.id AND error_code IS NOT NULL AND replaced_by IS NULL
            ORDER BY sequence DESC LIMIT 1
        ) e ON true
        WHERE r.message_id = $1
        ORDER BY r.id
        """,
        message_id,
    )
    return rows


def by_recipient(
    rows: Sequence[asyncpg.Record],
) -> list[tuple[asyncpg.Record, list[asyncpg.Record]]]:
    """Rows of recipients (one per attempt) as one entry per recipient of a message, in the
    order first seen: its latest attempt (its state) and every attempt, first to last."""
    grouped: dict[tuple[Any, str], list[asyncpg.Record]] = {}
    for row in rows:
        key = (row.get("message_id"), row["recipient"])
        grouped.setdefault(key, []).append(row)
    answer = []
    for attempts in grouped.values():
        attempts.sort(key=lambda row: row["attempt"])
        latest = next((row for row in attempts if not row["superseded"]), attempts[-1])
        answer.append((latest, attempts))
    return answer


# --- the query API -----------------------------------------------------------------------------

MESSAGE_COLUMNS = """
    m.id, m.provider, m.sender, m.body, m.client_ref, m.segments, m.encoding,
    m.provider_segments, m.provider_recipients, m.send_at, m.expires_at, m.created_at,
    m.dispatch_at, m.cancelled_at, m.tenant, m.routing
"""

RECIPIENT_COLUMNS = (
    "r.recipient, r.status, r.final, r.failure_kind, r.provider_message_id, r.segments, r.price,"
    " r.sequence, r.updated_at, r.message_id, r.country, r.provider, r.attempt, r.superseded"
)


async def message(
    connection: Connection, message_id: uuid.UUID, asker: Asker
) -> asyncpg.Record | None:
    """The message, if it is the asker's (another tenant's is as unknown as one that never
    was)."""
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {MESSAGE_COLUMNS} FROM messages m"
        f" WHERE m.id = $1 AND {asker.only_own('m.tenant', 2)}",
        message_id,
        asker.tenant_param(),
    )
    return row


async def recipients_of_message(
    connection: Connection, message_id: uuid.UUID
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT {RECIPIENT_COLUMNS} FROM message_recipients r WHERE r.message_id = $1"
        " ORDER BY r.id",
        message_id,
    )
    return rows


async def recipients_of_provider_id(
    connection: Connection, provider: str, provider_message_id: str, asker: Asker
) -> list[asyncpg.Record]:
    """The recipients under a provider's id that the asker may see: a tenant's own only (never
    a report that matches no message: those are the operator's)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT {RECIPIENT_COLUMNS} FROM message_recipients r"
        " WHERE r.provider = $1 AND r.provider_message_id = $2"
        f" AND {asker.only_own('r.tenant', 3)} ORDER BY r.id",
        provider,
        provider_message_id,
        asker.tenant_param(),
    )
    return rows


async def recipients_of_messages(
    connection: Connection, message_ids: Sequence[uuid.UUID]
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT {RECIPIENT_COLUMNS} FROM message_recipients r"
        " WHERE r.message_id = ANY($1::uuid[]) ORDER BY r.id",
        list(message_ids),
    )
    return rows


async def list_messages(
    connection: Connection,
    *,
    ref: str | None,
    provider: str | None,
    status: str | None,
    to: str | None,
    since: datetime | None,
    until: datetime | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    asker: Asker,
    tenant: str | None = None,
) -> list[asyncpg.Record]:
    """The asker's messages (of `tenant` alone, when given), newest first, keyset-paginated on
    (created_at, id)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        SELECT {MESSAGE_COLUMNS} FROM messages m
        WHERE {asker.only_own("m.tenant", 10)}
          AND ($11::text IS NULL OR m.tenant = $11)
          AND ($1::text IS NULL OR m.client_ref = $1)
          AND ($2::text IS NULL OR m.provider = $2)
          AND ($3::text IS NULL OR EXISTS (
                SELECT 1 FROM message_recipients r WHERE r.message_id = m.id AND r.status = $3
                AND NOT r.superseded))
          AND ($4::text IS NULL OR EXISTS (
                SELECT 1 FROM message_recipients r WHERE r.message_id = m.id
                AND r.recipient = $4))
          AND ($5::timestamptz IS NULL OR m.created_at >= $5)
          AND ($6::timestamptz IS NULL OR m.created_at < $6)
          AND ($7::timestamptz IS NULL OR (m.created_at, m.id) < ($7, $8::uuid))
        ORDER BY m.created_at DESC, m.id DESC
        LIMIT $9
        """,
        ref,
        provider,
        status,
        to,
        since,
        until,
        after[0] if after else None,
        after[1] if after else None,
        limit,
        asker.tenant_param(),
        tenant,
    )
    return rows


async def recipient_statuses(
    connection: Connection, message_ids: Sequence[uuid.UUID]
) -> list[asyncpg.Record]:
    """(provider, recipient, status) of these messages' recipients (the demo's watch)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT m.provider, r.recipient, r.status FROM messages m"
        " JOIN message_recipients r ON r.message_id = m.id"
        " WHERE m.id = ANY($1::uuid[]) ORDER BY m.provider, r.recipient",
        list(message_ids),
    )
    return rows


async def discrepancies_of(connection: Connection, message_id: uuid.UUID) -> list[asyncpg.Record]:
    """What reports about the message contradicted (migration 0025), oldest first."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT kind, provider, details, event_id, found_at FROM message_discrepancies"
        " WHERE message_id = $1 ORDER BY found_at, id",
        message_id,
    )
    return rows


async def discrepancy_counts(connection: Connection) -> dict[tuple[str, str], int]:
    rows = await connection.fetch(
        "SELECT provider, kind, count(*) AS n FROM message_discrepancies GROUP BY provider, kind"
    )
    return {(row["provider"], row["kind"]): row["n"] for row in rows}
