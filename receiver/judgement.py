"""The one judgement of a raw callback (unparsed, or normalised into events), made in memory by
its provider's normaliser, and which version of that normaliser made it. The callback route, the
spool's replay, `reprocess` and correction runs all judge a payload through `judge`.

A normaliser's version is `provider@` and the first 8 hex digits of the SHA-256 of its module's
source and of the shared modules it reads with: it changes whenever the code that reads the
provider's callbacks changes, without anyone having to bump it, so a correction run can say which
events came from which version."""

from __future__ import annotations

import functools
import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from normalizers.base import NormalizerError, Provider, in_region
from normalizers.events import Event
from normalizers.registry import Registry
from receiver.storage.callbacks import NORMALISED, UNPARSED, RawCallback, error_text

log = structlog.get_logger("receiver.judgement")


@dataclass(frozen=True, slots=True)
class Normalised:
    outcome: str
    error: str | None = None
    events: list[Event] = field(default_factory=list)
    normalizer: str | None = None  # the version of the normaliser that gave the events


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
    return Normalised(
        outcome=NORMALISED,
        events=in_region(events, region),
        # Beside the events, not in each (a dataclass copy per event costs 20 us), for the
        # storage to write on each.
        normalizer=normalizer_version(raw.provider, provider),
    )


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


# What every provider module reads with: a change here can change any provider's events.
SHARED_MODULES = ("normalizers.base", "normalizers.events", "normalizers.encoding")


def normalizer_version(name: str, provider: Provider) -> str:
    return f"{name}@{_source_digest(type(provider).__module__)}"


@functools.cache
def _source_digest(module_name: str) -> str:
    digest = hashlib.sha256()
    for name in (module_name, *SHARED_MODULES):
        # Imported here if this process has not yet: the version must not depend on what
        # else the process happened to import (a command and the server agree).
        source = getattr(importlib.import_module(name), "__file__", None)
        if source is not None:
            digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:8]
