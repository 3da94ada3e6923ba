"""properties (Fone Dynamics REST API v2, seed 002): delivery receipts and replies to leased
numbers, by GET (query string) or POST.

Documented (fonedynamics.com/docs/rest-api/sms-webhooks): webhooks come by GET or POST
(`DeliveryReceiptWebhookMethod`, `WebhookMethod`) with `Action` (always `Webhook`), `Event`
(`Message.Received` for an incoming message, `Message.DeliveryReceiptReceived` for a delivery
receipt), `Account.Sid`, `Property.Sid`, `Message.Sid`, `Message.From` (sender id or E.164),
`Message.To` (E.164) and `Message.Text` (for a receipt: the text of the message sent). That is the
whole documented list: no status, time, segments or error in a webhook, and no authentication.

Not documented: how POST bodies are encoded. Form bodies and JSON are both read, JSON with dotted
keys (`"Message.Sid"`) or nested objects (`{"Message": {"Sid": ...}}`). Should a webhook carry any
field of the Message resource (`Message.Status`, `Message.ErrorCode`, `Message.NumSegments`,
`Message.Delivered`, `Message.ExternalId`), it is used.

A receipt with no status means delivered: Fone Dynamics' statuses (Processing, Submitted,
Delivered, Failed, Received) have no negative delivery outcome (Failed is a failure to submit, not
a receipt), so the only receipt their model has is `Delivered`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from normalizers.base import (
    CallbackRequest,
    HttpRequest,
    HttpResponse,
    ParseError,
    SendOutcome,
    SendRequest,
    first_present,
    int_or_none,
    str_or_none,
    timing,
    to_e164,
)
from normalizers.events import Event, EventType, Status, event_id

NAME = "properties"

RECEIVED_EVENT = "message.received"
RECEIPT_EVENT = "message.deliveryreceiptreceived"

# The Message resource's Status values (fonedynamics.com/docs/rest-api/find-sms; meanings from
# their C# SDK's MessageStatus): Processing = being processed by Fone Dynamics, Submitted = handed
# to the SMS Center, Delivered, Failed = could not be submitted in reasonable time. Their fifth,
# Received, marks an incoming message, which the `Event` already tells; on a receipt it means
# nothing and stays `unknown`.
STATUS_MAP: Mapping[str, Status] = {
    "processing": Status.QUEUED,
    "scheduled": Status.SCHEDULED,
    "submitted": Status.SENT,
    "delivered": Status.DELIVERED,
    "failed": Status.FAILED,
}


class Properties:
    name = NAME

    def build_send_request(self, request: SendRequest) -> Sequence[HttpRequest]:
        raise NotImplementedError("properties sending comes with the send API (issue 4)")

    def parse_send_response(
        self, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome:
        raise NotImplementedError("properties sending comes with the send API (issue 4)")

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        payload = request.fields() if request.body.strip() else {}
        if isinstance(payload, list):
            return [event for item in payload for event in _webhook_events(item, {}, received_at)]
        return _webhook_events(payload, request.query_params(), received_at)

    def verify_callback(self, request: CallbackRequest, secret: str | None, now: datetime) -> bool:
        # Fone Dynamics documents no webhook authentication: the receiver's token and allow-list.
        return True


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"Message": {"Sid": 1}}` and `{"Message.Sid": 1}` both become `{"message.sid": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}".lower()
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _webhook_events(
    payload: object, query: Mapping[str, str], received_at: datetime
) -> list[Event]:
    if not isinstance(payload, Mapping):
        raise ParseError(f"expected webhook parameters, got {type(payload).__name__}")
    # A POST may still carry parameters in its query: the body wins.
    fields = {**_flatten(query), **_flatten(payload)}
    event_name = str(fields.get("event") or "").lower()
    sid = str_or_none(first_present(fields, "message.sid", "message.messagesid", "messagesid"))
    if sid is None:
        raise ParseError("webhook without Message.Sid")
    sender = to_e164(first_present(fields, "message.from", "from"))
    to = to_e164(first_present(fields, "message.to", "to"))
    word = str_or_none(first_present(fields, "message.status", "status"))
    stamp = first_present(fields, "message.delivered", "message.received", "message.submitted")
    common: dict[str, Any] = {
        "provider": NAME,
        "provider_message_id": sid,
        **timing(stamp, received_at),
        "segments": int_or_none(first_present(fields, "message.numsegments", "numsegments")),
        "client_ref": str_or_none(first_present(fields, "message.externalid", "externalid")),
    }
    if event_name == RECEIVED_EVENT:
        return [
            Event(
                id=event_id(NAME, EventType.INBOUND, sid),
                type=EventType.INBOUND,
                status=Status.RECEIVED,
                provider_status="Message.Received",
                sender=sender,
                recipient=to,
                text=str_or_none(first_present(fields, "message.text", "text")),
                **common,
            )
        ]
    if event_name != RECEIPT_EVENT:
        raise ParseError(f"unknown Event {fields.get('event')!r}")
    status = Status.DELIVERED if word is None else STATUS_MAP.get(word.lower(), Status.UNKNOWN)
    error_code = str_or_none(first_present(fields, "message.errorcode", "errorcode"))
    return [
        Event(
            id=event_id(NAME, EventType.STATUS, sid, to, word or "DeliveryReceiptReceived", stamp),
            type=EventType.STATUS,
            status=status,
            provider_status=word or "Message.DeliveryReceiptReceived",
            sender=sender,
            recipient=to,
            error_code=error_code,
            **common,
        )
    ]


PROVIDER = Properties()
