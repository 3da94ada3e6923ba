"""From a raw callback to what gets stored: normalise in memory, say the outcome, store.
Shared by the HTTP handler and `reprocess`, so both judge a payload the same way."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import structlog

from normalizers.base import NormalizerError, Provider
from normalizers.events import FINAL_STATUSES, Event
from receiver import queries
from receiver.errors import DatabaseUnavailable, is_data_refusal, is_database_unavailable
from receiver.metrics import EVENTS
from receiver.queries import Connection, IngestResult, RawCallback

log = structlog.get_logger("receiver.pipeline")

# Outcomes of a raw callback (raw_callbacks.outcome); `duplicate` is decided by storage.
NORMALISED = "normalised"
UNPARSED = "unparsed"
REJECTED = "rejected"

MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class Normalised:
    outcome: str
    error: str | None = None
    events: list[Event] = field(default_factory=list)


def normalise(provider: Provider, raw: RawCallback, max_events: int | None = None) -> Normalised:
    """Never raises for a bad payload: whatever the normaliser cannot read becomes `unparsed`
    with the reason kept, so that the callback is stored and can be re-run after a fix."""
    request = raw.as_callback_request()
    try:
        events = provider.parse_callback(request, raw.received_at)
    except NormalizerError as error:
        return Normalised(outcome=UNPARSED, error=_describe(error))
    except Exception as error:
        # A bug in a normaliser must not lose the provider's report: keep it as unparsed.
        log.exception("normaliser_crashed", provider=raw.provider, raw_id=str(raw.id))
        return Normalised(outcome=UNPARSED, error="normaliser error: " + _describe(error))
    if max_events is not None and len(events) > max_events:
        # Storing that many in the provider's time is not possible: keep it for `reprocess`.
        return Normalised(
            outcome=UNPARSED,
            error=f"{len(events)} events in one callback, over the limit of {max_events}",
        )
    return Normalised(outcome=NORMALISED, events=events)


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text[:MAX_ERROR_LENGTH]


async def store_callback(
    connection: Connection, raw: RawCallback, normalised: Normalised
) -> tuple[IngestResult, str | None]:
    """Store the raw callback with its events in one transaction; returns what was stored and
    the error kept on the raw row. Should the events be refused by the database (a value out of
    range, say), the raw callback is stored alone as `unparsed`, so that it is never lost, and
    `reprocess` takes it again once the normaliser is fixed."""
    try:
        result = await queries.ingest_callback(
            connection,
            raw,
            outcome=normalised.outcome,
            error=normalised.error,
            events=normalised.events,
        )
    except asyncpg.PostgresError as error:
        if not is_data_refusal(error):
            raise
        reason = describe_storage_error(error)
        log.error("events_refused_by_storage", raw_id=str(raw.id), error=reason)
        try:
            fallback = await queries.ingest_callback(
                connection, raw, outcome=UNPARSED, error=reason, events=[]
            )
        except Exception as fallback_error:
            if is_database_unavailable(fallback_error):
                raise
            # Not even the raw row alone: answer "retry later", never a 500.
            log.exception("raw_callback_refused_by_storage", raw_id=str(raw.id))
            raise DatabaseUnavailable("the callback could not be stored, retry later") from None
        return fallback, reason
    account_for(raw, normalised, result)
    return result, normalised.error


def account_for(raw: RawCallback, normalised: Normalised, result: IngestResult) -> None:
    """What a stored callback tells the operator: metrics, and a log line for conflicts."""
    log_conflicting_finals(normalised.events, result)
    count_events(raw.provider, normalised.events, result)


def count_events(provider: str, events: list[Event], result: IngestResult) -> None:
    """Every new event, whatever stored it (callback, send answer, reprocess), in /metrics."""
    statuses = {event.id: event.status for event in events}
    for stored in result.new_events:
        EVENTS.labels(provider, str(statuses.get(stored.event_id, "unknown"))).inc()


def log_conflicting_finals(events: list[Event], result: IngestResult) -> None:
    """A second, different final report is kept in history but changes nothing: say so."""
    statuses = {event.id: event.status for event in events}
    for stored in result.new_events:
        reported = statuses.get(stored.event_id)
        current = stored.recipient_status
        if reported in FINAL_STATUSES and current in FINAL_STATUSES and current != reported:
            log.warning(
                "conflicting_final_report",
                event_id=stored.event_id,
                reported=str(reported),
                kept=current,
            )


def describe_storage_error(error: asyncpg.PostgresError) -> str:
    return f"storage error: {type(error).__name__}: {error}"[:MAX_ERROR_LENGTH]
