"""Pydantic models of what the hub shows the outside world (validated at the edges)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from normalizers.events import EventType, Status


class PriceV1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: str
    currency: str


class EventV1(BaseModel):
    """The schema-v1 event (DESIGN.md), field for field. `raw_id` and `sequence` are null only
    in the output of `sms-receiver normalize`, which stores nothing."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: EventType
    provider: str
    message_id: str | None
    provider_message_id: str | None
    provider_part_id: str | None
    recipient: str | None
    sender: str | None
    status: Status
    final: bool
    provider_status: str
    error_code: str | None
    error_message: str | None
    occurred_at: datetime
    received_at: datetime
    client_ref: str | None
    segments: int | None
    price: PriceV1 | None
    text: str | None
    counts: dict[Status, int] | None
    raw_id: str | None
    sequence: int | None
    recipient_status: Status | None
    failure_kind: Literal["temporary", "permanent"] | None
    occurred_at_source: Literal["provider", "received"]
    synthetic: bool
