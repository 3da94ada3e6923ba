"""Re-emission: subscriptions, the deliveries outbox (claimed with FOR UPDATE SKIP LOCKED under
a lease), and the attempts made."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from receiver.storage.events import EVENT_COLUMNS, event_json
from receiver.storage.pool import Connection
from receiver.storage.tenants import Asker
from receiver.storage.values import storable_text

# --- subscriptions -----------------------------------------------------------------------------

SUBSCRIPTION_COLUMNS = (
    "id, url, destination, filters, description, enabled, disabled_reason, failing_since,"
    " created_at, updated_at, previous_secret_until, tenant"
)


async def create_subscription(
    connection: Connection,
    subscription_id: uuid.UUID,
    url: str | None,
    secret: str,
    filters: dict[str, Any],
    description: str | None,
    enabled: bool,
    asker: Asker,
    destination: dict[str, Any] | None = None,
) -> asyncpg.Record:
    """A subscription of the asker's, to a webhook `url` or a broker's `destination`: a
    tenant's receives that tenant's events, the operator's every event."""
    row: asyncpg.Record | None = await connection.fetchrow(
        f"""
        INSERT INTO subscriptions
            (id, url, secret, filters, description, enabled, tenant, destination)
        VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8::jsonb)
        RETURNING {SUBSCRIPTION_COLUMNS}
        """,
        subscription_id,
        url,
        secret,
        json.dumps(filters),
        description,
        enabled,
        asker.tenant,
        json.dumps(destination) if destination is not None else None,
    )
    assert row is not None
    return row


async def list_subscriptions(connection: Connection, asker: Asker) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"
        f" WHERE {asker.only_own('tenant', 1)} ORDER BY created_at, id",
        asker.tenant_param(),
    )
    return rows


async def get_subscription(
    connection: Connection, subscription_id: uuid.UUID, asker: Asker
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(
        f"SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"
        f" WHERE id = $1 AND {asker.only_own('tenant', 2)}",
        subscription_id,
        asker.tenant_param(),
    )
    return row


async def update_subscription(
    connection: Connection, subscription_id: uuid.UUID, changes: dict[str, Any], asker: Asker
) -> asyncpg.Record | None:
    """Set the given fields (url or destination, filters, description, enabled); enabling
    clears the reason. A new url replaces a destination, and a new destination a url."""
    row: asyncpg.Record | None = await connection.fetchrow(
        f"""
        UPDATE subscriptions SET
            url = CASE WHEN $8::jsonb IS NOT NULL THEN NULL ELSE coalesce($2, url) END,
            destination = CASE WHEN $2::text IS NOT NULL THEN NULL
                               ELSE coalesce($8::jsonb, destination) END,
            filters = coalesce($3::jsonb, filters),
            description = CASE WHEN $4 THEN $5 ELSE description END,
            enabled = coalesce($6, enabled),
            disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END,
            failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END,
            updated_at = now()
        WHERE id = $1 AND {asker.only_own("tenant", 7)}
        RETURNING {SUBSCRIPTION_COLUMNS}
        """,
        subscription_id,
        changes.get("url"),
        json.dumps(changes["filters"]) if "filters" in changes else None,
        "description" in changes,
        changes.get("description"),
        changes.get("enabled"),
        asker.tenant_param(),
        json.dumps(changes["destination"]) if "destination" in changes else None,
    )
    return row


async def delete_subscription(
    connection: Connection, subscription_id: uuid.UUID, asker: Asker
) -> bool:
    result: str = await connection.execute(
        f"DELETE FROM subscriptions WHERE id = $1 AND {asker.only_own('tenant', 2)}",
        subscription_id,
        asker.tenant_param(),
    )
    return result.endswith(" 1")


async def forget_expired_secrets(connection: Connection) -> int:
    """Clears every previous secret whose rotation window has ended: a credential is kept no
    longer than it signs. Returns how many."""
    result: str = await connection.execute(
        "UPDATE subscriptions SET previous_secret = NULL, previous_secret_until = NULL"
        " WHERE previous_secret IS NOT NULL AND previous_secret_until < now()"
    )
    return int(result.split()[-1])


async def rotate_secret(
    connection: Connection, subscription_id: uuid.UUID, secret: str, overlap_s: int, asker: Asker
) -> bool:
    """The new secret signs from now on; the old one signs too for `overlap_s`."""
    result: str = await connection.execute(
        f"""
        UPDATE subscriptions SET
            previous_secret = secret,
            previous_secret_until = now() + make_interval(secs => $3),
            secret = $2,
            updated_at = now()
        WHERE id = $1 AND {asker.only_own("tenant", 4)}
        """,
        subscription_id,
        secret,
        overlap_s,
        asker.tenant_param(),
    )
    return result.endswith(" 1")


async def replay(
    connection: Connection, subscription_id: uuid.UUID, since: datetime, filters: dict[str, Any]
) -> int:
    """Queue again every event stored since `since` that the subscription (and the extra
    filters) take, of its tenant's (of every tenant for the operator's); returns how many."""
    result: str = await connection.execute(
        """
        INSERT INTO deliveries AS d (subscription_id, event_id)
        SELECT s.id, e.id FROM subscriptions s JOIN events e ON e.stored_at >= $2
        WHERE s.id = $1 AND (s.tenant IS NULL OR e.tenant = s.tenant)
          AND e.replaced_by IS NULL  -- a replay rebuilds a copy: not with what was corrected
          AND subscription_takes(s.filters, e.type, e.provider, e.status)
          AND subscription_takes($3::jsonb, e.type, e.provider, e.status)
        ON CONFLICT (subscription_id, event_id) DO UPDATE SET
            status = 'pending', attempts = 0, next_attempt_at = now(), leased_until = NULL,
            lease_token = NULL, updated_at = now()
        WHERE d.status <> 'delivering' OR d.leased_until < now()  -- never under a live lease
        """,
        subscription_id,
        since,
        json.dumps(filters),
    )
    return int(result.split()[-1])


async def retry_delivery(connection: Connection, delivery_id: int, asker: Asker) -> bool:
    """A delivery of one of the asker's subscriptions tried again now."""
    result: str = await connection.execute(
        f"""
        UPDATE deliveries d SET status = 'pending', attempts = 0, next_attempt_at = now(),
            leased_until = NULL, lease_token = NULL, updated_at = now()
        FROM subscriptions s
        WHERE d.id = $1 AND (d.status <> 'delivering' OR d.leased_until < now())
          AND s.id = d.subscription_id AND {asker.only_own("s.tenant", 2)}
        """,
        delivery_id,
        asker.tenant_param(),
    )
    return result.endswith(" 1")


# --- the dispatcher ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: int
    lease_token: uuid.UUID
    attempt: int
    subscription_id: uuid.UUID
    url: str | None  # a webhook's; None for a broker's destination
    secrets: tuple[str, ...]
    event_id: str
    body: str  # the schema-v1 event as JSON, as it is posted and signed
    destination: dict[str, Any] | None = None  # a broker's: kind, name and where on it


async def claim_deliveries(
    connection: Connection, limit: int, per_subscription: int, lease_s: float
) -> list[Claimed]:
    """Take at most `limit` due deliveries of enabled subscriptions (and those whose lease ran
    out: their dispatcher died), keeping every subscription under `per_subscription` live leases
    across all dispatchers, so that a slow subscriber never holds the others."""
    token = uuid.uuid4()
    async with connection.transaction():
        # The subscriptions claimed for, locked first: another dispatcher claiming for one of
        # them meanwhile skips it, and the claim below, a statement of its own, counts the live
        # leases as every dispatcher that claimed before has committed them. Counted in the
        # same statement as the lock, two dispatchers could each see the slots free.
        subscriptions = [
            row["id"]
            for row in await connection.fetch(
                # A disabled tenant's subscriptions keep their deliveries until it is
                # enabled again.
                "SELECT s.id FROM subscriptions s WHERE s.enabled AND NOT EXISTS"
                " (SELECT 1 FROM tenants t WHERE t.name = s.tenant AND NOT t.enabled)"
                " ORDER BY s.id FOR NO KEY UPDATE OF s SKIP LOCKED"
            )
        ]
        if not subscriptions:
            return []
        rows = await _claim(connection, limit, per_subscription, lease_s, token, subscriptions)
    bodies: dict[str, str] = {}  # one event claimed for several subscribers: encoded once
    for row in rows:
        if row["id"] not in bodies:
            bodies[row["id"]] = json.dumps(
                event_json(row), separators=(",", ":"), ensure_ascii=False
            )
    return [
        Claimed(
            delivery_id=row["delivery_id"],
            lease_token=token,
            attempt=row["attempts"],
            subscription_id=row["subscription_id"],
            url=row["url"],
            secrets=(
                (row["secret"], row["previous_secret"])
                if row["both_secrets"] and row["previous_secret"]
                else (row["secret"],)
            ),
            event_id=row["id"],
            body=bodies[row["id"]],
            destination=json.loads(row["destination"]) if row["destination"] else None,
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt, as it ended."""

    claimed: Claimed
    started_at: datetime
    status_code: int | None
    latency_ms: float
    excerpt: str | None
    error: str | None
    outcome: str  # the delivery's status from now on: delivered, pending (retry) or failed
    next_attempt_in_s: float | None
    disable_subscription: str | None  # why to disable it at once (410 Gone), if so


async def record_attempts(
    connection: Connection, attempts: Sequence[Attempt], disable_after_failing_s: float
) -> list[bool]:
    """Stores each attempt and, if its lease is still ours (else another dispatcher has the
    delivery now: nothing changes), its consequence, all in one statement (one transaction);
    returns whether each lease was ours. A subscription with a delivered attempt in the batch is
    healthy again (unless one was answered 410); one whose attempts all failed is failing, and
    is disabled by a 410 or after failing for `disable_after_failing_s`."""
    rows = await connection.fetch(
        """
        WITH given AS (
            SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::float8[], $5::int[],
                                 $6::text[], $7::int[], $8::timestamptz[], $9::float8[],
                                 $10::text[], $11::text[], $12::uuid[])
                AS g(delivery_id, lease_token, outcome, next_in, status_code, error, attempt,
                     started_at, latency_ms, excerpt, disable, subscription_id)
        ), owned AS (
            UPDATE deliveries d SET
                status = g.outcome,
                next_attempt_at = CASE WHEN g.next_in IS NULL THEN d.next_attempt_at
                                       ELSE now() + make_interval(secs => g.next_in) END,
                leased_until = NULL, lease_token = NULL, last_status = g.status_code,
                last_error = g.error,
                delivered_at = CASE WHEN g.outcome = 'delivered' THEN now() END,
                updated_at = now()
            FROM given g
            WHERE d.id = g.delivery_id AND d.lease_token = g.lease_token
            RETURNING d.id, g.outcome, g.disable, g.subscription_id
        ), recorded AS (
            INSERT INTO delivery_attempts
                (delivery_id, attempt, started_at, status_code, latency_ms, response_excerpt,
                 error)
            SELECT delivery_id, attempt, started_at, status_code, latency_ms, excerpt, error
            FROM given g
            -- Not for a delivery deleted meanwhile (with its subscription): nothing to attach to.
            WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.id = g.delivery_id)
        ), verdict AS (
            SELECT subscription_id, bool_or(outcome = 'delivered') AS any_delivered,
                   max(disable) AS disable
            FROM owned GROUP BY subscription_id
        ), healthy AS (
            UPDATE subscriptions s SET failing_since = NULL
            FROM verdict v
            WHERE s.id = v.subscription_id AND v.any_delivered AND v.disable IS NULL
              AND s.failing_since IS NOT NULL
        ), failing AS (
            UPDATE subscriptions s SET
                failing_since = coalesce(s.failing_since, now()),
                enabled = CASE WHEN v.disable IS NOT NULL
                                 OR coalesce(s.failing_since, now())
                                    < now() - make_interval(secs => $13)
                               THEN false ELSE s.enabled END,
                disabled_reason = CASE
                    WHEN v.disable IS NOT NULL THEN v.disable
                    WHEN coalesce(s.failing_since, now()) < now() - make_interval(secs => $13)
                        THEN 'failing continuously'
                    ELSE s.disabled_reason END,
                updated_at = now()
            FROM verdict v
            WHERE s.id = v.subscription_id AND (NOT v.any_delivered OR v.disable IS NOT NULL)
        )
        SELECT id FROM owned
        """,
        [a.claimed.delivery_id for a in attempts],
        [a.claimed.lease_token for a in attempts],
        [a.outcome for a in attempts],
        [a.next_attempt_in_s for a in attempts],
        [a.status_code for a in attempts],
        [storable_text(a.error) for a in attempts],
        [a.claimed.attempt for a in attempts],
        [a.started_at for a in attempts],
        [a.latency_ms for a in attempts],
        [storable_text(a.excerpt) for a in attempts],
        [a.disable_subscription for a in attempts],
        [a.claimed.subscription_id for a in attempts],
        disable_after_failing_s,
    )
    owned = {row["id"] for row in rows}
    return [a.claimed.delivery_id in owned for a in attempts]


async def queue_counts(connection: Connection) -> dict[str, int]:
    """Deliveries waiting (`pending`) and under way (`delivering`)."""
    rows = await connection.fetch(
        "SELECT status, count(*) AS n FROM deliveries"
        " WHERE status IN ('pending', 'delivering') GROUP BY status"
    )
    return {row["status"]: row["n"] for row in rows}


async def _claim(
    connection: Connection,
    limit: int,
    per_subscription: int,
    lease_s: float,
    token: uuid.UUID,
    subscriptions: list[uuid.UUID],
) -> list[asyncpg.Record]:
    """The claim itself, for the subscriptions the caller has locked."""
    rows: list[asyncpg.Record] = await connection.fetch(
        f"""
        WITH live AS (
            SELECT subscription_id, count(*) AS leased FROM deliveries
            WHERE status = 'delivering' AND leased_until >= now()
              AND subscription_id = ANY($5::uuid[])
            GROUP BY subscription_id
        ), due AS (
            -- Each subscription's oldest due deliveries, no more than its free slots: one
            -- subscriber's backlog never fills the claim and leaves the others waiting.
            SELECT d.id, d.next_attempt_at
            FROM subscriptions s
            LEFT JOIN live ON live.subscription_id = s.id
            CROSS JOIN LATERAL (
                SELECT d.id, d.next_attempt_at FROM deliveries d
                WHERE d.subscription_id = s.id
                  AND ((d.status = 'pending' AND d.next_attempt_at <= now())
                       OR (d.status = 'delivering' AND d.leased_until < now()))
                ORDER BY d.next_attempt_at
                LIMIT greatest($2 - coalesce(live.leased, 0), 0)
                FOR UPDATE OF d SKIP LOCKED
            ) d
            WHERE s.enabled AND s.id = ANY($5::uuid[])
        ), pick AS (
            SELECT due.id FROM due ORDER BY due.next_attempt_at, due.id LIMIT $1
        ), taken AS (
            UPDATE deliveries d SET
                status = 'delivering', attempts = d.attempts + 1,
                leased_until = now() + make_interval(secs => $3), lease_token = $4,
                updated_at = now()
            FROM pick
            WHERE d.id = pick.id
            RETURNING d.id, d.attempts, d.subscription_id, d.event_id
        )
        SELECT taken.id AS delivery_id, taken.attempts, s.id AS subscription_id, s.url,
               s.destination,
               s.secret, s.previous_secret, s.previous_secret_until > now() AS both_secrets,
               {EVENT_COLUMNS}
        FROM taken
        JOIN subscriptions s ON s.id = taken.subscription_id
        JOIN events e ON e.id = taken.event_id
        ORDER BY taken.id
        """,
        limit,
        per_subscription,
        lease_s,
        token,
        subscriptions,
    )
    return rows


async def subscription_health(
    connection: Connection, subscriptions: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """Per subscription of these: its backlog (deliveries waiting or under way), its attempts
    of the last 24 hours and how many succeeded, and its latest failed attempt of the last 7
    days."""
    ids = list(subscriptions)
    backlog = await connection.fetch(
        "SELECT subscription_id, count(*) AS n FROM deliveries"
        " WHERE status IN ('pending', 'delivering') AND subscription_id = ANY($1::uuid[])"
        " GROUP BY subscription_id",
        ids,
    )
    attempts = await connection.fetch(
        """
        SELECT d.subscription_id, count(*) AS attempts,
               count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS succeeded
        FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
        WHERE a.started_at > now() - interval '24 hours' AND d.subscription_id = ANY($1::uuid[])
        GROUP BY d.subscription_id
        """,
        ids,
    )
    last_errors = await connection.fetch(
        """
        SELECT DISTINCT ON (d.subscription_id) d.subscription_id, a.started_at, a.status_code,
               a.error
        FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
        WHERE a.started_at > now() - interval '7 days' AND d.subscription_id = ANY($1::uuid[])
          AND (a.status_code IS NULL OR a.status_code NOT BETWEEN 200 AND 299)
        ORDER BY d.subscription_id, a.started_at DESC
        """,
        ids,
    )
    health: dict[uuid.UUID, dict[str, Any]] = {}
    for row in backlog:
        health.setdefault(row["subscription_id"], {})["backlog"] = row["n"]
    for row in attempts:
        health.setdefault(row["subscription_id"], {}).update(
            attempts_24h=row["attempts"], succeeded_24h=row["succeeded"]
        )
    for row in last_errors:
        health.setdefault(row["subscription_id"], {})["last_error"] = {
            "at": row["started_at"],
            "status_code": row["status_code"],
            "error": row["error"],
        }
    return health


async def failed_deliveries(
    connection: Connection, limit: int, asker: Asker
) -> list[asyncpg.Record]:
    """The deliveries of the asker's subscriptions given up on most recently (to retry one)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT d.id, d.subscription_id, d.event_id, d.attempts, d.last_status, d.last_error,"
        " d.updated_at FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
        f" WHERE d.status = 'failed' AND {asker.only_own('s.tenant', 2)}"
        " ORDER BY d.updated_at DESC LIMIT $1",
        limit,
        asker.tenant_param(),
    )
    return rows
