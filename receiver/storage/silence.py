"""Recipients past their deadline with no final status: claimed for the silence sweep."""

from __future__ import annotations

import asyncpg

from receiver.storage.pool import Connection


async def claim_silent(connection: Connection, limit: int) -> list[asyncpg.Record]:
    """Up to `limit` recipients past their deadline, the longest overdue first, locked until
    the transaction ends (those another instance holds are skipped), their deadline cleared:
    whatever their synthetic event becomes, they are not claimed again. Those that ended
    meanwhile come too (`final`): only their deadline is cleared. (The index holds every
    deadline, so that the reports' updates of a recipient touch no index.)"""
    rows: list[asyncpg.Record] = await connection.fetch(
        """
        SELECT id, provider, provider_message_id, recipient, deadline, message_id, final
        FROM message_recipients
        WHERE deadline IS NOT NULL AND deadline <= now()
        ORDER BY deadline
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    if rows:
        await connection.execute(
            "UPDATE message_recipients SET deadline = NULL WHERE id = ANY($1::bigint[])",
            [row["id"] for row in rows],
        )
    return rows
