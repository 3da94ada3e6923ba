"""The providers' health per destination country, which routing reads to move traffic to the
healthy ones: the window's rules (GOV.UK Notify's: at least HEALTH_SLOW_SHARE of the texts slower
than HEALTH_SLOW_S; a delivery rate below HEALTH_MIN_DELIVERY_RATE), judged by one instance at a
time every HEALTH_CHECK_S and changed at most once per HEALTH_HOLD_S; and a circuit breaker,
opened at once by HEALTH_SEND_ERRORS send errors in a row, let through by one probe every
HEALTH_PROBE_S, closed by the probe's success. Every change is a `provider.health` event to
operator subscriptions, a metric and a log line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from normalizers.events import Event, EventType, Status, event_id
from receiver.config import Settings
from receiver.metrics import PROVIDER_DEGRADED
from receiver.periodic import repeat
from receiver.storage import provider_health
from receiver.storage.callbacks import store_events_alone
from receiver.storage.notify import Signal
from receiver.storage.pool import Connection, Database

log = structlog.get_logger("receiver.routing.health")

SEND_ERRORS = "send_errors"


@dataclass(frozen=True, slots=True)
class State:
    state: str
    rule: str
    reason: str
    changed_at: datetime


def verdict(
    figures: asyncpg.Record | Mapping[str, Any], settings: Settings
) -> tuple[str, str] | None:
    """Which window rule a provider breaks for a country, and how, if any."""
    window = f"the last {settings.health_window_s / 60:g} min"
    judged, slow = figures["judged"], figures["slow"]
    if judged >= settings.health_min_sample and slow / judged >= settings.health_slow_share:
        return (
            "slow",
            f"{slow / judged:.0%} of {judged} texts in {window} took over"
            f" {settings.health_slow_s:g} s to deliver (or have not yet)",
        )
    ended, delivered = figures["ended"], figures["delivered"]
    if (
        ended >= settings.health_min_sample
        and delivered / ended < settings.health_min_delivery_rate
    ):
        return (
            "delivery_rate",
            f"delivered {delivered / ended:.0%} of {ended} ended texts in {window}"
            f" (below {settings.health_min_delivery_rate:.0%})",
        )
    return None


def health_event(
    provider: str,
    country: str,
    state: str,
    rule: str,
    reason: str,
    figures: Mapping[str, Any] | None,
    at: datetime,
) -> Event:
    """The `provider.health` event of a change (the operator's: no tenant)."""
    return Event(
        id=event_id(provider, "health", country, state, at.isoformat()),
        type=EventType.PROVIDER_HEALTH,
        provider=provider,
        status=Status.UNKNOWN,  # not a message's status: `details.state` says
        provider_status=state,
        occurred_at=at,
        received_at=at,
        occurred_at_source="received",
        synthetic=True,
        details={
            "country": country or None,
            "state": state,
            "rule": rule,
            "reason": reason,
            "figures": dict(figures) if figures is not None else None,
        },
    )


async def change(
    connection: Connection,
    provider: str,
    country: str,
    state: str,
    rule: str,
    reason: str,
    figures: Mapping[str, Any] | None = None,
) -> None:
    """Records a change of health and its event (in the caller's transaction)."""
    at = await provider_health.set_state(
        connection, provider, country, state, rule, reason, figures
    )
    await store_events_alone(
        connection, [health_event(provider, country, state, rule, reason, figures, at)]
    )
    PROVIDER_DEGRADED.labels(provider, country).set(1 if state == "degraded" else 0)
    log.warning(
        "provider_health_changed",
        provider=provider,
        country=country or None,
        state=state,
        rule=rule,
        reason=reason,
    )


class HealthWatch:
    """Judges the providers by the window's rules every HEALTH_CHECK_S (one instance a round)."""

    def __init__(self, db: Database, settings: Settings, signal: Signal) -> None:
        self.db = db
        self.settings = settings
        self.signal = signal
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        async def step() -> bool:
            await self.tick()
            return False

        await repeat(log, "health_watch", step, self.settings.health_check_s, self.stopping)

    async def stop(self) -> None:
        self.stopping.set()

    async def tick(self, now: datetime | None = None) -> int:
        """Judges once; returns the number of changes made."""
        settings = self.settings
        now = now or datetime.now(UTC)
        hold = timedelta(seconds=settings.health_hold_s)
        changes = 0
        async with self.db.connection() as connection, connection.transaction():
            if not await provider_health.take_watch(connection):
                return 0
            seen = {
                (row["provider"], row["country"]): row
                for row in await provider_health.figures(
                    connection, settings.health_window_s, settings.health_slow_s
                )
            }
            current = {
                (row["provider"], row["country"]): row
                for row in await provider_health.states(connection)
            }
            for key in seen.keys() | current.keys():
                row = current.get(key)
                if row is not None and row["rule"] == SEND_ERRORS and row["state"] == "degraded":
                    continue  # the circuit breaker's: its probe closes it
                if row is not None and row["changed_at"] + hold > now:
                    continue  # at most one change per hold time
                figures = seen.get(key)
                found = verdict(figures, settings) if figures is not None else None
                numbers = dict(figures) if figures is not None else None
                if numbers is not None:
                    numbers.pop("provider", None)
                    numbers.pop("country", None)
                degraded = row is not None and row["state"] == "degraded"
                if found is not None and not degraded:
                    await change(connection, key[0], key[1], "degraded", *found, numbers)
                    changes += 1
                elif found is None and degraded:
                    await change(
                        connection,
                        key[0],
                        key[1],
                        "healthy",
                        "recovered",
                        "no health rule broken in the window any more",
                        numbers,
                    )
                    changes += 1
        if changes:
            self.signal.new_events()
        return changes


@dataclass
class Breakers:
    """This instance's count of each provider's send errors in a row, per country ('' for a
    call to several), and when it last let a probe through an open circuit."""

    errors: dict[tuple[str, str], int] = field(default_factory=dict)
    probes: dict[tuple[str, str], float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic  # a test's own time

    def failed(self, key: tuple[str, str]) -> int:
        self.errors[key] = self.errors.get(key, 0) + 1
        return self.errors[key]

    def succeeded(self, key: tuple[str, str]) -> None:
        self.errors.pop(key, None)

    def may_probe(self, key: tuple[str, str], every_s: float) -> bool:
        now = self.clock()
        if now - self.probes.get(key, float("-inf")) < every_s:
            return False
        self.probes[key] = now
        return True
