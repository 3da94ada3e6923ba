"""The unified event schema (v1) and status vocabulary every provider is translated into."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal


class Status(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    RECEIVED = "received"
    UNKNOWN = "unknown"


FINAL_STATUSES = frozenset(
    {
        Status.DELIVERED,
        Status.UNDELIVERED,
        Status.FAILED,
        Status.REJECTED,
        Status.EXPIRED,
        Status.CANCELLED,
        Status.RECEIVED,
    }
)

# The recipient state machine moves only to a higher rank; the same ordering lives in SQL
# (migrations: status_rank) where concurrent reports are resolved.
STATUS_RANK: Mapping[Status, int] = {
    Status.UNKNOWN: 0,
    Status.ACCEPTED: 1,
    Status.SCHEDULED: 1,
    Status.QUEUED: 2,
    Status.SENT: 3,
    **{status: 4 for status in FINAL_STATUSES},
}


class EventType(StrEnum):
    STATUS = "message.status"
    SUMMARY = "message.summary"
    INBOUND = "message.inbound"
    # A provider's health for a country changed (routing): the operator's only.
    PROVIDER_HEALTH = "provider.health"
    # A handset opted out or back in (a keyword reply, the API, an import): the hub's own.
    CONTACT_OPTED_OUT = "contact.opted_out"
    CONTACT_OPTED_IN = "contact.opted_in"
    # A report contradicts what the hub knows of its message (a summary's counts, a recipient
    # the message never had).
    DISCREPANCY = "message.discrepancy"


# The schema-v1 event's fields, in the order every form of it lists them: the one declaration.
# `Event.to_json`, the stored columns (`events`), the API's model (`EventV1`) and the row reader
# are derived from it or tested against it.
EVENT_V1_FIELDS: tuple[str, ...] = (
    "id",
    "type",
    "provider",
    "message_id",
    "provider_message_id",
    "provider_part_id",
    "recipient",
    "sender",
    "status",
    "final",
    "provider_status",
    "error_code",
    "error_message",
    "occurred_at",
    "received_at",
    "client_ref",
    "segments",
    "price",
    "text",
    "counts",
    "raw_id",
    "sequence",
    "recipient_status",
    "failure_kind",
    "occurred_at_source",
    "synthetic",
    "tenant",
    "attempt",
    "details",
    "correction",
)

FailureKind = Literal["temporary", "permanent"]
OccurredAtSource = Literal["provider", "received"]


@dataclass(frozen=True, slots=True)
class Price:
    amount: str
    currency: str


@dataclass(frozen=True, slots=True)
class Event:
    """One normalised report. Storage fields (raw_id, message_id, sequence, recipient_status,
    tenant, attempt) are filled by the pipeline once the event is stored; a normaliser leaves them
    empty."""

    id: str
    type: EventType
    provider: str
    status: Status
    provider_status: str
    occurred_at: datetime
    received_at: datetime
    occurred_at_source: OccurredAtSource
    provider_message_id: str | None = None
    provider_part_id: str | None = None
    recipient: str | None = None
    sender: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    client_ref: str | None = None
    segments: int | None = None
    price: Price | None = None
    text: str | None = None
    counts: Mapping[str, int] | None = None
    failure_kind: FailureKind | None = None
    synthetic: bool = False
    raw_id: str | None = None
    message_id: str | None = None
    sequence: int | None = None
    recipient_status: Status | None = None
    tenant: str | None = None  # the storage's answer: whose event it is (None: the operator's)
    # Which send attempt of the recipient it is about (1 unless routing failed over): storage's.
    attempt: int = 1
    # What a type without a recipient carries besides the common fields (provider.health's
    # country, state, reason and figures); None for the others.
    details: Mapping[str, Any] | None = None
    # On an event a correction run re-derived: {"run": run id, "replaces": the event id it
    # replaces, or None for one that is new}; storage's, like raw_id.
    correction: Mapping[str, Any] | None = None
    # Which normaliser version made it (`provider@hash`): stored, not part of schema v1.
    normalizer: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def stored_raw(self, raw_id: str) -> Event:
        return dataclasses.replace(self, raw_id=raw_id)

    def to_json(self) -> dict[str, Any]:
        """The schema-v1 object: stored, returned by the API and re-emitted to subscribers."""
        return {
            "id": self.id,
            "type": str(self.type),
            "provider": self.provider,
            "message_id": self.message_id,
            "provider_message_id": self.provider_message_id,
            "provider_part_id": self.provider_part_id,
            "recipient": self.recipient,
            "sender": self.sender,
            "status": str(self.status),
            "final": self.final,
            "provider_status": self.provider_status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "occurred_at": rfc3339(self.occurred_at),
            "received_at": rfc3339(self.received_at),
            "client_ref": self.client_ref,
            "segments": self.segments,
            "price": (
                {"amount": self.price.amount, "currency": self.price.currency}
                if self.price
                else None
            ),
            "text": self.text,
            "counts": dict(self.counts) if self.counts is not None else None,
            "raw_id": self.raw_id,
            "sequence": self.sequence,
            "recipient_status": (
                str(self.recipient_status) if self.recipient_status is not None else None
            ),
            "failure_kind": self.failure_kind,
            "occurred_at_source": self.occurred_at_source,
            "synthetic": self.synthetic,
            "tenant": self.tenant,
            "attempt": self.attempt,
            "details": dict(self.details) if self.details is not None else None,
            "correction": dict(self.correction) if self.correction is not None else None,
        }


def rfc3339(moment: datetime) -> str:
    """UTC with milliseconds and a `Z`, the one timestamp form the hub emits."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(provider: str, *identity: object) -> str:
    """A stable id from the provider's identity of a report: the same report received twice
    gets the same id, so storage collapses duplicates; any differing part gives another id."""
    material = "\x1f".join([provider, *("" if part is None else str(part) for part in identity)])
    encoded = material.encode("utf-8", "surrogatepass")  # lone surrogates from bad JSON
    return "evt_" + hashlib.sha256(encoded).hexdigest()[:32]
