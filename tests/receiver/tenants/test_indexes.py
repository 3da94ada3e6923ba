"""A tenant's lists (messages, the feed, inbound replies) are read through the indexes that lead
with the tenant, not by walking every tenant's rows: the plans of the storage functions'
own statements, on a database where the asking tenant has a tenth of the rows."""

from __future__ import annotations

from typing import Any

import asyncpg

from receiver.storage import events, messages
from receiver.storage.tenants import Asker, create_tenant


class Explaining:
    """A connection whose fetch explains the statement instead of running it."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.plans: list[str] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        rows = await self.connection.fetch(f"EXPLAIN {sql}", *args)
        self.plans.append("\n".join(row[0] for row in rows))
        return []


async def test_a_tenants_lists_take_the_indexes_that_lead_with_the_tenant(
    db: asyncpg.Connection,
) -> None:
    await create_tenant(db, "small")
    await db.execute(
        """
        INSERT INTO messages (id, provider, sender, created_at, tenant)
        SELECT md5('m' || n)::uuid, 'swift', '+447700900990',
               now() - make_interval(secs => n),
               CASE WHEN n % 10 = 0 THEN 'small' ELSE 'default' END
        FROM generate_series(1, 20000) AS n;
        INSERT INTO events (id, type, provider, status, final, provider_status, occurred_at,
                            received_at, occurred_at_source, tenant, recipient, sender)
        SELECT 'ev-' || n, CASE WHEN n % 3 = 0 THEN 'message.inbound' ELSE 'message.status' END,
               'swift', 'delivered', true, 'delivered', now(), now(), 'provider',
               CASE WHEN n % 10 = 0 THEN 'small' ELSE 'default' END,
               '+447700900990', '+447700900001'
        FROM generate_series(1, 20000) AS n;
        ANALYZE messages; ANALYZE events;
        """
    )
    small = Asker("small")
    explaining = Explaining(db)

    await messages.list_messages(
        explaining,  # type: ignore[arg-type]
        ref=None,
        provider=None,
        status=None,
        to=None,
        since=None,
        until=None,
        after=None,
        limit=51,
        asker=small,
    )
    await events.feed(explaining, None, 100, None, None, small)  # type: ignore[arg-type]
    await events.inbound(
        explaining,  # type: ignore[arg-type]
        provider=None,
        handset=None,
        ours=None,
        since=None,
        until=None,
        after=None,
        limit=51,
        asker=small,
    )

    listed, fed, replies = explaining.plans
    assert "messages_tenant_created_idx" in listed, listed
    assert "events_p" in fed  # the partitions' copies of the index are named after it
    assert "tenant_txid_feed_seq_idx" in fed, fed
    assert "tenant_stored_at_id_idx" in replies, replies
