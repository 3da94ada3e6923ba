"""Silence ends: a recipient with no final status by its deadline (its message's `expires_at`,
else the time it was sent plus the provider's silence timeout) is given a synthetic `expired`,
stored and re-emitted like any report. A real final report that arrives later takes over
(migration 0012: takes_over). Runs in `worker`, and in `serve` with its dispatcher; several
instances share the work (FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from normalizers.base import SendRequest
from normalizers.events import Event, Status
from receiver.config import Settings
from receiver.metrics import EVENTS, SYNTHETIC_EXPIRIES
from receiver.periodic import repeat
from receiver.sending.hub_events import hub_event
from receiver.storage.callbacks import store_events_alone
from receiver.storage.notify import Signal
from receiver.storage.pool import Database
from receiver.storage.silence import claim_silent

log = structlog.get_logger("receiver.sending.silence")

# Recipients expired in one transaction at most; a full batch is followed at once by another.
BATCH = 500
# The provider status word of a synthetic expiry: no provider said anything.
SILENCE = "no_final_report"


def deadline(settings: Settings, provider: str, send: SendRequest) -> datetime:
    """When a recipient of this send stops waiting for its final report."""
    if send.expires_at is not None:
        return send.expires_at
    sent = send.send_at or datetime.now(UTC)
    return sent + timedelta(seconds=settings.silence_timeout(provider))


def expiry(row: asyncpg.Record, now: datetime) -> Event:
    """The synthetic `expired` of one silent recipient (its id the same whenever it is made)."""
    return hub_event(
        row,
        Status.EXPIRED,
        SILENCE,
        "no final report by the deadline: the message's expires_at, or the time it was sent"
        " plus the silence timeout",
        occurred_at=row["deadline"],
        received_at=now,
        failure_kind="temporary",
    )


class SilenceSweep:
    def __init__(self, db: Database, settings: Settings, signal: Signal) -> None:
        self.db = db
        self.settings = settings
        self.signal = signal
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Sweeps every SILENCE_SWEEP_S (at once again after a full batch) until stopped."""

        async def step() -> bool:
            return await self.sweep() >= BATCH

        await repeat(log, "silence_sweep", step, self.settings.silence_sweep_s, self.stopping)

    async def stop(self) -> None:
        self.stopping.set()

    async def sweep(self) -> int:
        """One batch: the recipients past their deadline given their synthetic `expired` (those
        that ended meanwhile only lose their deadline), in one transaction. Returns how many
        were claimed."""
        now = datetime.now(UTC)
        async with self.db.connection() as connection, connection.transaction():
            rows = await claim_silent(connection, BATCH)
            if not rows:
                return 0
            events = [expiry(row, now) for row in rows if not row["final"]]
            result = await store_events_alone(connection, events)
        new = {stored.event_id for stored in result.new_events}
        for event in events:
            if event.id in new:
                EVENTS.labels(event.provider, str(event.status)).inc()
                SYNTHETIC_EXPIRIES.labels(event.provider).inc()
        if new:
            self.signal.new_events()
        log.info("silence_expired", recipients=len(rows), events=len(new))
        return len(rows)
