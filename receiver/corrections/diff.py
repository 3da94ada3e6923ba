"""What a raw callback gives today against what it gave when it was stored: pure, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from normalizers.events import EVENT_V1_FIELDS, Event

# The fields a normaliser decides: schema v1's but those storage fills (and `final`, which is
# the status's, and `id`, by which events are paired).
DECIDED_BY_STORAGE = frozenset(
    {
        "id",
        "provider",
        "final",
        "message_id",
        "raw_id",
        "sequence",
        "recipient_status",
        "tenant",
        "attempt",
        "correction",
    }
)
COMPARED_FIELDS: tuple[str, ...] = tuple(
    name for name in EVENT_V1_FIELDS if name not in DECIDED_BY_STORAGE
)


@dataclass(frozen=True, slots=True)
class Standing:
    """A stored event no run replaced: its row's id, the id its normaliser gave it, its
    recipient's row, and its schema-v1 fields."""

    id: str
    natural: str
    recipient_id: int | None
    fields: Mapping[str, Any]
    normalizer: str | None = None  # the version that made it (None: before versions were kept)


@dataclass(frozen=True, slots=True)
class Change:
    old: Standing
    new: Event
    fields: dict[str, tuple[Any, Any]]  # field: (stored, derived today)


@dataclass(slots=True)
class CallbackDiff:
    added: list[tuple[Event, str | None]] = field(default_factory=list)  # with what it replaces
    removed: list[Standing] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def compare(
    standing: Sequence[Standing], derived: Iterable[Event], standing_elsewhere: set[str]
) -> CallbackDiff:
    """The events a callback gives today against those it gave that still stand (by the
    normaliser's id). A derived event that stands already under another callback (a duplicate
    delivery of the same report) is not new. An event added where one of the same recipient
    and kind was removed replaces it."""
    diff = CallbackDiff()
    by_natural = {event.natural: event for event in standing}
    seen: set[str] = set()
    fresh: list[Event] = []
    for event in derived:
        if event.id in seen:
            continue  # storage keeps one of a callback's repeated reports
        seen.add(event.id)
        old = by_natural.get(event.id)
        if old is None:
            if event.id not in standing_elsewhere:
                fresh.append(event)
            continue
        differences = field_differences(old.fields, event.to_json())
        if differences:
            diff.changed.append(Change(old=old, new=event, fields=differences))
    diff.removed = [event for event in standing if event.natural not in seen]
    unpaired = list(diff.removed)
    for event in fresh:
        key = _kind_and_recipient(event.to_json())
        match = next((old for old in unpaired if _kind_and_recipient(old.fields) == key), None)
        if match is not None:
            unpaired.remove(match)
        diff.added.append((event, match.id if match is not None else None))
    return diff


def field_differences(
    stored: Mapping[str, Any], derived: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    derived = _as_stored(stored, derived)
    return {
        name: (stored.get(name), derived.get(name))
        for name in COMPARED_FIELDS
        if stored.get(name) != derived.get(name)
    }


def _as_stored(stored: Mapping[str, Any], derived: Mapping[str, Any]) -> Mapping[str, Any]:
    """Storage files a report about a part under its message's id, the part's id in
    `provider_part_id`: the same report, however it was addressed."""
    if (
        derived.get("provider_part_id") is None
        and stored.get("provider_part_id") is not None
        and stored.get("provider_part_id") == derived.get("provider_message_id")
    ):
        return {
            **derived,
            "provider_message_id": stored.get("provider_message_id"),
            "provider_part_id": stored.get("provider_part_id"),
        }
    return derived


def _kind_and_recipient(fields: Mapping[str, Any]) -> tuple[Any, ...]:
    return (fields.get("type"), fields.get("provider_message_id"), fields.get("recipient"))
