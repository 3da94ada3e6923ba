"""Upkeep rounds: partitions made a week ahead of need, partitions past their kind's retention
dropped whole, messages and finished deliveries retired in bounded batches. Runs in `worker`,
and in `serve` with its dispatcher, at start and every UPKEEP_INTERVAL_S; with several
instances one round runs at a time (an advisory lock), the others skip theirs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from receiver.config import Settings
from receiver.periodic import repeat
from receiver.storage import limits, retention
from receiver.storage.pool import Database

log = structlog.get_logger("receiver.upkeep.retention")

# Partitions exist this long before a row may need them.
AHEAD = timedelta(days=7)
# Rows removed per transaction, and transactions per kind in one round: a round ends in
# bounded time, the next one goes on where it stopped.
BATCH = 1000
BATCHES_PER_ROUND = 100


@dataclass(slots=True)
class Round:
    """What one upkeep round did."""

    created: dict[str, int] = field(default_factory=dict)
    dropped: list[retention.Dropped] = field(default_factory=list)
    messages: int = 0
    orphan_recipients: int = 0
    deliveries: int = 0
    limits: int = 0  # send rate buckets and quota days forgotten
    skipped: bool = False  # another instance was at it


def retention_days(settings: Settings) -> dict[str, int]:
    """Each partitioned table's retention."""
    return {
        "events": settings.event_retention_days,
        "raw_callbacks": settings.raw_retention_days,
        "delivery_attempts": settings.delivery_retention_days,
    }


class Upkeep:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """A round at start, then every UPKEEP_INTERVAL_S, until stopped."""

        async def step() -> bool:
            await self.round()
            return False  # a round does a bounded share; the next one goes on

        await repeat(log, "upkeep", step, self.settings.upkeep_interval_s, self.stopping)

    async def stop(self) -> None:
        self.stopping.set()

    async def round(self, now: datetime | None = None) -> Round:
        now = now or datetime.now(UTC)
        done = Round()
        settings = self.settings
        async with self.db.connection() as connection:
            if not await connection.fetchval(
                "SELECT pg_try_advisory_lock($1)", retention.UPKEEP_LOCK_KEY
            ):
                done.skipped = True
                return done
            try:
                for table, days in retention_days(settings).items():
                    done.created[table] = await retention.create_partitions(
                        connection, table, now, now + AHEAD
                    )
                    done.dropped += await retention.drop_partitions(
                        connection, table, now - timedelta(days=days)
                    )
                message_cut = now - timedelta(days=settings.message_retention_days)
                for _ in range(BATCHES_PER_ROUND):
                    retired = await retention.retire_messages(connection, message_cut, BATCH)
                    done.messages += retired
                    if retired < BATCH:
                        break
                for _ in range(BATCHES_PER_ROUND):
                    retired = await retention.retire_orphan_recipients(
                        connection, message_cut, BATCH
                    )
                    done.orphan_recipients += retired
                    if retired < BATCH:
                        break
                after: int | None = 0
                for _ in range(BATCHES_PER_ROUND):
                    if after is None:
                        break
                    retired, after = await retention.retire_deliveries(
                        connection,
                        now - timedelta(days=settings.delivery_retention_days),
                        now - timedelta(days=settings.event_retention_days),
                        after,
                        BATCH,
                    )
                    done.deliveries += retired
                # rate buckets idle a day are full again; quotas of days gone are done with
                done.limits = await limits.purge_limits(
                    connection, now - timedelta(days=1), (now - timedelta(days=1)).date()
                )
                strays = await retention.rows_in_default_partitions(connection)
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", retention.UPKEEP_LOCK_KEY)
        for table, found in strays.items():
            if found:
                log.error(
                    "rows_in_default_partition",
                    table=table,
                    hint=f"rows of {table} fell outside every partition: make the missing"
                    f" partitions, then move the rows of {table}_default into them",
                )
        for dropped in done.dropped:
            log.info(
                "partition_dropped",
                table=dropped.table,
                partition=dropped.partition,
                ends=dropped.ends.isoformat(),
                estimated_rows=dropped.estimated_rows,
            )
        if any(done.created.values()) or done.messages or done.orphan_recipients or done.deliveries:
            log.info(
                "upkeep_done",
                partitions_created=sum(done.created.values()),
                messages_retired=done.messages,
                orphan_recipients_retired=done.orphan_recipients,
                deliveries_retired=done.deliveries,
            )
        return done
