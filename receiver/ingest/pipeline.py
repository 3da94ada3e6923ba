"""From an authenticated raw callback to what gets stored: the one judgement of its outcome
(unparsed, or normalised into events), made in memory, and storing a callback as judged. The
callback route, the spool's replay and `reprocess` all judge a payload through `judge`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import structlog

from normalizers.base import NormalizerError, Provider, in_region
from normalizers.events import Event
from normalizers.registry import Registry
from receiver.storage.callbacks import (
    NORMALISED,
    UNPARSED,
    IngestResult,
    RawCallback,
    error_text,
    store_callback,
)
from receiver.storage.pool import Connection
from receiver.versions import normalizer_version

log = structlog.get_logger("receiver.ingest.pipeline")


@dataclass(frozen=True, slots=True)
class Normalised:
    outcome: str
    error: str | None = None
    events: list[Event] = field(default_factory=list)


def unparsed(reason: str) -> Normalised:
    return Normalised(outcome=UNPARSED, error=error_text(reason))


def judge(
    registry: Registry,
    raw: RawCallback,
    *,
    max_events: int | None = None,
    region: str | None = None,
) -> Normalised:
    """The outcome of a raw callback: what its provider's normaliser makes of it, national
    numbers read in the provider's `region` (DEFAULT_REGION)."""
    provider = registry.get(raw.provider)
    if provider is None:
        return unparsed(f"no provider named {raw.provider!r}")
    return normalise(provider, raw, max_events, region)


def normalise(
    provider: Provider,
    raw: RawCallback,
    max_events: int | None = None,
    region: str | None = None,
) -> Normalised:
    """Never raises for a bad payload: whatever the normaliser cannot read becomes `unparsed`
    with the reason kept, so that the callback is stored and can be re-run after a fix."""
    request = raw.as_callback_request()
    try:
        events = provider.parse_callback(request, raw.received_at)
    except NormalizerError as error:
        return unparsed(_describe(error))
    except Exception as error:
        # A bug in a normaliser must not lose the provider's report: keep it as unparsed.
        log.exception("normaliser_crashed", provider=raw.provider, raw_id=str(raw.id))
        return unparsed("normaliser error: " + _describe(error))
    if max_events is not None and len(events) > max_events:
        # Storing that many in the provider's time is not possible: keep it for `reprocess`.
        return unparsed(f"{len(events)} events in one callback, over the limit of {max_events}")
    version = normalizer_version(raw.provider, provider)
    return Normalised(
        outcome=NORMALISED,
        events=[replace(event, normalizer=version) for event in in_region(events, region)],
    )


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


async def store(
    connection: Connection, raw: RawCallback, normalised: Normalised
) -> tuple[IngestResult, str | None]:
    """Stores the callback as judged, alone (see `storage.callbacks.store_callback`)."""
    return await store_callback(
        connection,
        raw,
        outcome=normalised.outcome,
        error=normalised.error,
        events=normalised.events,
    )
