"""Pydantic models of what the hub shows the outside world (validated at the edges)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from normalizers.events import EventType, Status


class PriceV1(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: str
    currency: str


class CorrectionV1(BaseModel):
    run: str
    replaces: str | None


class EventV1(BaseModel):
    """The schema-v1 event, field for field (`EVENT_V1_FIELDS`, tested). `raw_id` and
    `sequence` are null only in the output of `sms-receiver normalize`, which stores nothing."""

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
    tenant: str | None  # whose event it is; null: the operator's alone
    attempt: int  # which send attempt of the recipient (1 unless routing failed over)
    # provider.health: {country, state, reason, figures}; null for the message events
    details: dict[str, Any] | None
    # on an event a correction run re-derived: which run, and the event it replaces (null: one
    # the old normaliser did not give); null on every other event
    correction: CorrectionV1 | None


# --- answers of the HTTP API (the OpenAPI document is generated from these) -------------------


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """The one error shape of every endpoint."""

    error: ErrorDetail


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    database: str


class CallbackAnswer(BaseModel):
    status: Literal["normalised", "duplicate", "unparsed"]
    raw_id: str
    events: int
    duplicates: int
    error: str | None = None


class SendAttempt(BaseModel):
    """One provider's attempt at a recipient (several when routing failed over)."""

    attempt: int
    provider: str
    status: Status
    final: bool
    provider_message_id: str | None
    error_code: str | None
    error_message: str | None


class SendRecipient(BaseModel):
    to: str | None
    status: Status
    final: bool
    provider: str  # the provider that carries it: its latest attempt's
    attempt: int
    provider_message_id: str | None
    failure_kind: Literal["temporary", "permanent"] | None
    error_code: str | None
    error_message: str | None
    attempts: list[SendAttempt]


class SendAnswer(BaseModel):
    id: str
    provider: str
    segments: int
    encoding: Literal["GSM-7", "UCS-2"]
    provider_segments: int | None
    provider_recipients: int | None  # as the provider counted them, where it says
    stored: bool
    recipients: list[SendRecipient]


class CancelAnswer(BaseModel):
    id: str
    cancelled: bool
    recipients: list[SendRecipient]


class RecipientAttempt(BaseModel):
    attempt: int
    provider: str
    status: Status
    final: bool
    failure_kind: Literal["temporary", "permanent"] | None
    provider_message_id: str | None


class RecipientView(BaseModel):
    to: str | None
    provider: str  # the provider that carries it: its latest attempt's
    attempt: int
    status: Status
    final: bool
    failure_kind: Literal["temporary", "permanent"] | None
    provider_message_id: str | None
    country: str | None  # ISO 3166, of a message the hub sent
    segments: int | None
    price: PriceV1 | None
    sequence: int
    updated_at: datetime
    attempts: list[RecipientAttempt]


class RoutingDecision(BaseModel):
    """How the hub chose the providers of some of a message's recipients."""

    route: str | None  # null: DEFAULT_PROVIDER, no route matching
    choose: str
    providers: list[str]  # in the order they are tried
    why: str
    failover_on_timeout: bool
    redeliver: dict[str, Any] | None
    to: list[str]


class MessageSummary(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    provider: str
    from_: str | None = Field(alias="from")
    body: str | None
    ref: str | None
    segments: int | None
    encoding: str | None
    provider_segments: int | None
    provider_recipients: int | None
    send_at: datetime | None
    expires_at: datetime | None
    created_at: datetime
    tenant: str
    routing: list[RoutingDecision] | None  # null: the caller named the provider
    recipients: list[RecipientView]


class Discrepancy(BaseModel):
    """A report that contradicts what the hub knows of the message: `summary_counts` (a
    summary's counts do not add up to the recipients), `summary_delivered` (it says more
    delivered than the recipients can be, or, once final, fewer than they are),
    `unknown_recipient` (a report about a recipient the message never had)."""

    kind: Literal["summary_counts", "summary_delivered", "unknown_recipient"]
    provider: str
    details: dict[str, Any]
    event_id: str  # its message.discrepancy event
    found_at: datetime


class MessageView(MessageSummary):
    discrepancies: list[Discrepancy]
    events: list[EventV1]


class OrphanView(BaseModel):
    id: None
    provider: str
    orphan: bool
    recipients: list[RecipientView]
    events: list[EventV1]


class MessageList(BaseModel):
    data: list[MessageSummary]
    next_cursor: str | None


class EventWithCursor(EventV1):
    cursor: str


class EventPage(BaseModel):
    data: list[EventWithCursor]
    next_cursor: str | None


class InboundEvent(EventV1):
    in_reply_to: str | None


class InboundPage(BaseModel):
    data: list[InboundEvent]
    next_cursor: str | None


class SubscriptionView(BaseModel):
    id: str
    url: str | None  # a webhook's; null for a broker's destination
    # a broker's: {"kind": "jetstream", "name", "subject"} or {"kind": "rabbitmq", "name",
    # "exchange", "routing_key"} (the broker's URL stays in the settings)
    destination: dict[str, str] | None
    filters: dict[str, list[str]]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime
    tenant: str | None  # whose events it receives; null: the operator's, every event


class SubscriptionCreated(SubscriptionView):
    secret: str


class SubscriptionList(BaseModel):
    data: list[SubscriptionView]


class RotatedSecret(BaseModel):
    secret: str
    previous_secret_valid_for_s: int


class Queued(BaseModel):
    queued: int | bool


class RawCallbackSummary(BaseModel):
    id: str
    provider: str
    source: Literal["callback", "send_answer"]
    method: str
    path: str
    outcome: Literal["normalised", "duplicate", "unparsed"]
    error: str | None
    event_count: int
    remote_addr: str | None
    received_at: datetime


class RawCallbackDetail(RawCallbackSummary):
    query: str
    headers: list[list[str]]
    body: str
    body_encoding: Literal["utf-8", "base64"]
    events: list[EventV1]


class RawCallbackPage(BaseModel):
    data: list[RawCallbackSummary]
    next_cursor: str | None


class CallbackRefusal(BaseModel):
    """A callback refused by authentication: what it was, never what it said."""

    id: str
    provider: str
    method: str
    remote_addr: str | None
    reason: str
    status: int
    size_bytes: int
    body_sha256: str
    received_at: datetime


class CallbackRefusalPage(BaseModel):
    data: list[CallbackRefusal]
    next_cursor: str | None


class DestinationStats(BaseModel):
    messages: int
    recipients: int
    delivered: int
    delivery_rate: float | None
    final_report_p50_s: float | None
    final_report_p95_s: float | None
    synthetic_expired: int
    synthetic_expiry_share: float | None
    fast_deliveries: int  # delivered sooner than fast_under_s after sending: fake DLRs?
    double_deliveries: int  # sent again by routing, and delivered by two attempts
    # implausible reports: `delivered` to a number libphonenumber says cannot exist
    impossible_deliveries: int
    # recipients with a provider's report dated over a minute before the message was sent
    reports_before_send: int


class ProviderStats(BaseModel):
    messages: int
    recipients: int
    delivered: int
    delivery_rate: float | None
    reports_by_status: dict[str, int]
    final_report_p50_s: float | None
    final_report_p95_s: float | None
    synthetic_expired: int
    synthetic_expiry_share: float | None
    fast_deliveries: int
    double_deliveries: int  # sent again by routing, and delivered by two attempts
    impossible_deliveries: int
    reports_before_send: int
    unparsed_callbacks: int
    rejected_callbacks: int  # refused by authentication (GET /v1/callback-refusals)


class Stats(BaseModel):
    since: datetime | None
    until: datetime | None
    fast_under_s: float
    providers: dict[str, ProviderStats]
    countries: dict[str, DestinationStats]  # ISO 3166 code, or `unknown`


class ReprocessResult(BaseModel):
    id: str
    outcome: str  # normalised, unparsed
    new_events: int
    result: str  # what happened, in a line (as `sms-receiver reprocess` prints it)
