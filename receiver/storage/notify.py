"""Wake-ups: new events were stored. In-process waiters (the dispatcher, event streams) are woken
at once; other instances through Postgres NOTIFY, sent by a small debouncer outside the ingest
transactions (a NOTIFY inside each of them would serialise their commits)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import structlog

from receiver.storage.pool import Database

log = structlog.get_logger("receiver.storage.notify")

CHANNEL = "sms_receiver_events"
# Waits between attempts to LISTEN again after its connection was lost.
LISTEN_RETRY_MIN_S = 0.5
LISTEN_RETRY_MAX_S = 30.0


class Signal:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._notify_pending = False
        self._db: Database | None = None

    def fire(self) -> None:
        """Wake every waiter of this process."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def current(self) -> asyncio.Event:
        """The wake-up to wait for. Take it BEFORE looking for work: a fire that happens while
        looking then still ends the wait that follows."""
        return self._event

    async def wait(self, timeout_s: float, wake: asyncio.Event | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for((wake or self._event).wait(), timeout_s)

    def new_events(self) -> None:
        """Called after new events are committed: wake here now, and other instances soon."""
        self.fire()
        if self._db is not None and not self._notify_pending:
            self._notify_pending = True
            asyncio.get_running_loop().create_task(self._notify_soon())

    async def _notify_soon(self) -> None:
        await asyncio.sleep(0.01)  # one NOTIFY for every event stored meanwhile
        self._notify_pending = False
        if self._db is None:
            return
        try:
            async with self._db.connection() as connection:
                await connection.execute("SELECT pg_notify($1, '')", CHANNEL)
        except Exception as error:  # the polling backstop covers a lost wake-up
            log.warning("notify_failed", error=repr(error))

    @contextlib.asynccontextmanager
    async def connected(self, db: Database, dsn: str) -> AsyncIterator[None]:
        """Send NOTIFYs through `db`'s pool, and LISTEN (own connection) for other instances',
        connecting again whenever that connection is lost."""
        self._db = db
        listening = asyncio.get_running_loop().create_task(self._listen_forever(dsn))
        try:
            yield
        finally:
            self._db = None
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening

    async def _listen_forever(self, dsn: str) -> None:
        """LISTEN on a connection of its own; when it is lost (a restart, a terminated backend,
        a failover), wake every waiter (a NOTIFY may have been missed: they look for work once)
        and connect again, backing off to LISTEN_RETRY_MAX_S. Polling stays the backstop."""
        pause = LISTEN_RETRY_MIN_S
        lost_before = False
        while True:
            listener: asyncpg.Connection | None = None
            try:
                listener = await asyncpg.connect(dsn, timeout=10)
                gone = asyncio.Event()
                listener.add_termination_listener(lambda _connection, lost=gone: lost.set())
                await listener.add_listener(CHANNEL, lambda *_: self.fire())
                if lost_before:
                    log.info("listen_restored")
                    self.fire()
                pause = LISTEN_RETRY_MIN_S
                await gone.wait()
                log.warning("listen_lost", hint="polling covers the gap until it is back")
                lost_before = True
                self.fire()
            except asyncio.CancelledError:
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await listener.close()
                raise
            except Exception as error:
                log.warning("listen_failed", error=repr(error), retry_in_s=pause)
                lost_before = True
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await listener.close()
            await asyncio.sleep(pause)
            pause = min(pause * 2, LISTEN_RETRY_MAX_S)
