"""LISTEN/NOTIFY between instances: the LISTEN connection comes back when it is lost, and the
waiters are woken meanwhile (a NOTIFY may have been missed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg

from receiver.storage.notify import CHANNEL, Signal
from receiver.storage.pool import Database


async def listener_pids(db: asyncpg.Connection) -> list[int]:
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
    )
    return [row["pid"] for row in rows]


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not within the time")


async def test_a_lost_listen_connection_is_made_again(dsn: str, db: asyncpg.Connection) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    assert pool is not None
    signal = Signal()
    try:
        async with signal.connected(Database(pool, 2.0), dsn):

            async def listening() -> bool:
                return bool(await listener_pids(db))

            await until(listening)
            [first] = await listener_pids(db)
            woken = signal.current()

            await db.execute("SELECT pg_terminate_backend($1)", first)

            # the waiters are woken at once (a NOTIFY may have been missed meanwhile) ...
            await asyncio.wait_for(woken.wait(), 5)

            # ... and a new LISTEN connection takes the old one's place
            async def listening_again() -> bool:
                pids = await listener_pids(db)
                return bool(pids) and first not in pids

            await until(listening_again)
            again = signal.current()
            await db.execute(f"NOTIFY {CHANNEL}")
            await asyncio.wait_for(again.wait(), 5)
    finally:
        await pool.close()
