"""The send API's rate limit and daily quota, kept in Postgres so that every instance shares
them (migration 0018)."""

from __future__ import annotations

from datetime import date, datetime

from receiver.storage.pool import Connection


async def take_send_token(
    connection: Connection, caller: str, rate_per_s: float, burst: int
) -> float | None:
    """One request from `caller`'s bucket: None if allowed, else the seconds until it would be."""
    wait_s: float | None = await connection.fetchval(
        "SELECT take_send_token($1, $2, $3)", caller, rate_per_s, burst
    )
    return wait_s


async def take_send_quota(
    connection: Connection, caller: str, day: date, recipients: int, per_day: int
) -> bool:
    """Takes `recipients` from `caller`'s quota of `day`: False (nothing taken) when they are
    more than what is left."""
    taken: bool = await connection.fetchval(
        "SELECT take_send_quota($1, $2, $3, $4)", caller, day, recipients, per_day
    )
    return taken


async def purge_limits(connection: Connection, idle_since: datetime, before_day: date) -> int:
    """Forgets buckets idle since `idle_since` (full again by now) and quotas of days before
    `before_day`; returns how many rows."""
    buckets: str = await connection.execute(
        "DELETE FROM send_rate_buckets WHERE updated_at < $1", idle_since
    )
    days: str = await connection.execute("DELETE FROM send_quota_days WHERE day < $1", before_day)
    return int(buckets.split()[-1]) + int(days.split()[-1])
