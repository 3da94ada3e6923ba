"""Partitions and retention (migration 0016): partitions made ahead of need, whole partitions
dropped past their kind's retention, and what is not partitioned retired in bounded batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from receiver.storage.pool import Connection

# The tables cut by time, each with its partition key.
PARTITIONED = {
    "events": "stored_at",
    "raw_callbacks": "received_at",
    "delivery_attempts": "started_at",
}
# A partition is dropped only if it can be locked within this: a long query reading the table
# is not made to wait behind the drop, nor are the writers queued behind both.
DROP_LOCK_TIMEOUT = "5s"
# Any constant shared by every instance: "smsu" in ASCII (one upkeep round at a time).
UPKEEP_LOCK_KEY = 0x736D7375


@dataclass(frozen=True, slots=True)
class Dropped:
    table: str
    partition: str
    ends: datetime
    estimated_rows: int


async def create_partitions(
    connection: Connection, table: str, since: datetime, until: datetime
) -> int:
    """Makes the missing partitions of `table` from `since` to `until`; returns how many."""
    created: int = await connection.fetchval(
        "SELECT create_partitions($1, $2, $3)", table, since, until
    )
    return created


async def drop_partitions(connection: Connection, table: str, before: datetime) -> list[Dropped]:
    """Drops each partition of `table` whose every row is older than `before` (the legacy one
    included, once its cut is); the default partition never. Returns what it dropped."""
    rows = await connection.fetch(
        """
        SELECT p.name, p.ends, greatest(c.reltuples, 0)::bigint AS estimated_rows
        FROM table_partitions($1) p JOIN pg_class c ON c.relname = p.name
        WHERE p.ends <= $2
        ORDER BY p.ends
        """,
        table,
        before,
    )
    dropped = []
    for row in rows:
        async with connection.transaction():
            await connection.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
            await connection.execute("SELECT drop_partition($1, $2)", table, row["name"])
        dropped.append(Dropped(table, row["name"], row["ends"], row["estimated_rows"]))
    return dropped


async def rows_in_default_partitions(connection: Connection) -> dict[str, bool]:
    """Whether each table's default partition holds a row (it should not: a partition was not
    made in time, or a row came with a time far off)."""
    found = {}
    for table in PARTITIONED:
        found[table] = await connection.fetchval("SELECT default_partition_has_rows($1)", table)
    return found


async def retire_messages(connection: Connection, before: datetime, batch: int) -> int:
    """Removes up to `batch` messages created before `before` with their recipients (and the
    recipients' parts), in one transaction; returns how many messages."""
    async with connection.transaction():
        ids = [
            row["id"]
            for row in await connection.fetch(
                "SELECT id FROM messages WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
                before,
                batch,
            )
        ]
        if not ids:
            return 0
        await connection.execute(
            "DELETE FROM recipient_parts WHERE recipient_id IN"
            " (SELECT id FROM message_recipients WHERE message_id = ANY($1::uuid[]))",
            ids,
        )
        await connection.execute(
            "DELETE FROM message_recipients WHERE message_id = ANY($1::uuid[])", ids
        )
        await connection.execute("DELETE FROM messages WHERE id = ANY($1::uuid[])", ids)
    return len(ids)


async def retire_orphan_recipients(connection: Connection, before: datetime, batch: int) -> int:
    """Removes up to `batch` recipients of no message (reports for ids the hub never sent) not
    updated since `before`; returns how many."""
    async with connection.transaction():
        ids = [
            row["id"]
            for row in await connection.fetch(
                "SELECT id FROM message_recipients WHERE message_id IS NULL AND updated_at < $1"
                " LIMIT $2 FOR UPDATE SKIP LOCKED",
                before,
                batch,
            )
        ]
        if not ids:
            return 0
        await connection.execute(
            "DELETE FROM recipient_parts WHERE recipient_id = ANY($1::bigint[])", ids
        )
        await connection.execute("DELETE FROM message_recipients WHERE id = ANY($1::bigint[])", ids)
    return len(ids)


async def retire_deliveries(
    connection: Connection,
    finished_before: datetime,
    any_before: datetime,
    after_id: int,
    batch: int,
) -> tuple[int, int | None]:
    """Looks at up to `batch` deliveries after `after_id` in id (that is, creation) order and
    removes the finished ones (delivered, failed) created before `finished_before` and any
    created before `any_before` (their event is past its retention). Returns how many it removed
    and where to go on from, or None once it has reached deliveries too young to remove: the
    walk follows the primary key, so retiring costs no index on the outbox's hot path."""
    rows = await connection.fetch(
        "SELECT id, status, created_at FROM deliveries WHERE id > $1 ORDER BY id LIMIT $2",
        after_id,
        batch,
    )
    doomed = [
        row["id"]
        for row in rows
        if row["created_at"] < any_before
        or (row["status"] in ("delivered", "failed") and row["created_at"] < finished_before)
    ]
    if doomed:
        await connection.execute("DELETE FROM deliveries WHERE id = ANY($1::bigint[])", doomed)
    if len(rows) < batch or rows[-1]["created_at"] >= finished_before:
        return len(doomed), None
    return len(doomed), rows[-1]["id"]
