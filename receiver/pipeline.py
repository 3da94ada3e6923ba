"""From a raw callback to what gets stored: authenticate, normalise in memory, and say the
outcome. Shared by the HTTP handler and `reprocess`, so both judge a payload the same way."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from normalizers.base import CallbackRequest, NormalizerError, Provider
from normalizers.events import Event
from receiver.queries import RawCallback

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


def as_callback_request(raw: RawCallback) -> CallbackRequest:
    return CallbackRequest(
        method=raw.method, path=raw.path, query=raw.query, headers=raw.headers, body=raw.body
    )


def normalise(
    provider: Provider, raw: RawCallback, *, secret: str | None = None, verify: bool = True
) -> Normalised:
    """Never raises for a bad payload: whatever the normaliser cannot read becomes `unparsed`
    with the reason kept, so that the callback is stored and can be re-run after a fix."""
    request = as_callback_request(raw)
    try:
        if verify and not provider.verify_callback(request, secret):
            return Normalised(outcome=REJECTED, error="callback authentication failed")
        events = provider.parse_callback(request, raw.received_at)
    except NormalizerError as error:
        return Normalised(outcome=UNPARSED, error=_describe(error))
    except Exception as error:
        # A bug in a normaliser must not lose the provider's report: keep it as unparsed.
        log.exception("normaliser_crashed", provider=raw.provider, raw_id=str(raw.id))
        return Normalised(outcome=UNPARSED, error="normaliser error: " + _describe(error))
    stamped = [event.stored_raw(str(raw.id)) for event in events]
    return Normalised(outcome=NORMALISED, events=stamped)


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text[:MAX_ERROR_LENGTH]
