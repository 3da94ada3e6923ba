"""Refused callbacks cost the hub little: their metadata is kept in memory (bounded) and written
in batches, off the callback path's own connections, never spooled; a source address refused too
often is answered 429 before its body is read."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque

import structlog

from receiver.metrics import REFUSALS_DROPPED
from receiver.ratelimit import RateLimiter
from receiver.storage.callbacks import RawCallback, error_text
from receiver.storage.pool import Database
from receiver.storage.refusals import Refusal, insert_refusals

log = structlog.get_logger("receiver.ingest.refusals")

# Refusals waiting to be written at most: beyond (the database away, a flood), the newest are
# counted (smsr_callback_refusals_dropped_total) and not kept.
MAX_PENDING = 10_000
# A batch is written at least this often, and at once when this many wait.
FLUSH_EVERY_S = 1.0
FLUSH_AT = 500
# Where a refusal has no address (a Unix socket, a test client): one bucket for all of them.
UNKNOWN_SOURCE = "unknown"


def refusal_of(raw: RawCallback, reason: str, status: int) -> Refusal:
    return Refusal(
        id=raw.id,
        received_at=raw.received_at,
        provider=raw.provider,
        method=raw.method,
        remote_addr=raw.remote_addr,
        reason=error_text(reason),
        status=status,
        size_bytes=len(raw.body),
        body_sha256=hashlib.sha256(raw.body).digest(),
    )


class Refusals:
    """The refusals' record and their rate limit per source address, for one app."""

    def __init__(self, db: Database, limiter: RateLimiter) -> None:
        self.db = db
        self.limiter = limiter
        self._pending: deque[Refusal] = deque()
        self._wake = asyncio.Event()

    def wait_for(self, source: str | None) -> float | None:
        """None when `source` may be heard, else the seconds until it may (it has been refused
        too often): asked before the body is read."""
        return self.limiter.wait(source or UNKNOWN_SOURCE)

    def record(self, refusal: Refusal) -> None:
        self.limiter.take(refusal.remote_addr or UNKNOWN_SOURCE)
        if len(self._pending) >= MAX_PENDING:
            REFUSALS_DROPPED.inc()
            return
        self._pending.append(refusal)
        if len(self._pending) >= FLUSH_AT:
            self._wake.set()

    async def flush(self) -> int:
        """Writes what waits, in one statement; kept for the next round when the database
        cannot take it. Returns how many were written."""
        batch = list(self._pending)
        if not batch:
            return 0
        async with self.db.connection() as connection:
            await insert_refusals(connection, batch)
        for _ in batch:
            self._pending.popleft()
        return len(batch)

    async def run(self) -> None:
        """Flushes every FLUSH_EVERY_S (sooner when FLUSH_AT wait) until cancelled, then once
        more."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY_S)
                self._wake.clear()
                try:
                    await self.flush()
                except Exception as error:
                    log.warning(
                        "refusals_not_written", pending=len(self._pending), error=repr(error)
                    )
        finally:
            with contextlib.suppress(Exception):
                await self.flush()
