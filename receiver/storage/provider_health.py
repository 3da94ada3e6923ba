"""The providers' health per destination country (migration 0023): the figures of their recent
sends, and the states the health rules and the circuit breaker leave."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import asyncpg

from receiver.storage.pool import Connection

# Watchers of several instances take turns: one judges at a time, the others skip that round.
WATCH_LOCK = 0x534D5352_48454C54  # "SMSR" "HELT"


async def take_watch(connection: Connection) -> bool:
    """In the caller's transaction: whether this instance judges the providers this round."""
    taken: bool = await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", WATCH_LOCK)
    return taken


async def figures(connection: Connection, window_s: float, slow_s: float) -> list[asyncpg.Record]:
    """Per provider and destination country ('' when unknown): the window's attempts, how
    many ended, were delivered, are old enough to judge their speed, and were slow (delivered
    later than `slow_s` after sending, or not yet delivered that long after)."""
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        SELECT r.provider, coalesce(r.country, '') AS country,
               count(*) AS sent,
               count(*) FILTER (WHERE r.final) AS ended,
               count(*) FILTER (WHERE r.status = 'delivered') AS delivered,
               count(*) FILTER (WHERE r.final OR r.created_at < now() - make_interval(secs => $2))
                   AS judged,
               count(*) FILTER (
                   WHERE (r.status = 'delivered'
                          AND r.updated_at - r.created_at > make_interval(secs => $2))
                      OR (r.status <> 'delivered'
                          AND r.created_at < now() - make_interval(secs => $2)))
                   AS slow
        FROM message_recipients r
        WHERE r.message_id IS NOT NULL AND r.created_at >= now() - make_interval(secs => $1)
        GROUP BY 1, 2
        """,
        window_s,
        slow_s,
    )
    return rows


async def states(connection: Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT provider, country, state, rule, reason, figures, changed_at FROM provider_health"
        " ORDER BY provider, country"
    )
    return rows


async def set_state(
    connection: Connection,
    provider: str,
    country: str,
    state: str,
    rule: str,
    reason: str,
    figures: Mapping[str, Any] | None,
) -> datetime:
    changed_at: datetime = await connection.fetchval(
        """
        INSERT INTO provider_health (provider, country, state, rule, reason, figures)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb)
        ON CONFLICT (provider, country) DO UPDATE SET
            state = excluded.state, rule = excluded.rule, reason = excluded.reason,
            figures = excluded.figures, changed_at = now()
        RETURNING changed_at
        """,
        provider,
        country,
        state,
        rule,
        reason,
        json.dumps(dict(figures)) if figures is not None else None,
    )
    return changed_at
