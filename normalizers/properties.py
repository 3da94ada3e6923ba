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

import base64
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from normalizers.base import (
    CallbackRequest,
    HttpRequest,
    HttpResponse,
    OptionsError,
    ParseError,
    ProviderAccount,
    SendOutcome,
    SendRequest,
    StrictOptions,
    first_present,
    int_or_none,
    refused,
    send_answer_event,
    str_or_none,
    timing,
    to_e164,
    unanswered,
    validated_options,
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


SCHEDULE_AHEAD = timedelta(days=14)
SCHEDULE_LATE = timedelta(hours=1)

# Options that apply only to a leased sender (no From), and their API names.
LEASE_FIELDS = {
    "forward_to_sms": "ForwardToSms",
    "forward_from_sms": "ForwardFromSms",
    "forward_to_email": "ForwardToEmail",
    "forward_from_email": "ForwardFromEmail",
}


class Options(StrictOptions):
    """Optional and lease-specific parameters of POST /v2/Properties/{PropertySid}/Messages."""

    delivery_receipt: bool | None = None
    delivery_receipt_method: Literal["GET", "POST"] | None = None
    webhook_method: Literal["GET", "POST"] | None = None
    forward_to_sms: str | None = None
    forward_from_sms: str | None = None
    forward_to_email: str | None = None
    forward_from_email: str | None = None


class Properties:
    name = NAME
    signs_callbacks = False  # no documented signature: token and allow-list only
    schedules_sends = True  # Schedule, at most 14 days ahead

    def validate_options(
        self, options: Mapping[str, Any], request: SendRequest, now: datetime
    ) -> Mapping[str, Any]:
        checked = validated_options(Options, options)
        problems = []
        sender = request.sender
        if sender and not sender.startswith("+") and not _is_alphanumeric_sender(sender):
            problems.append(
                {
                    "field": "from",
                    "error": "an alphanumeric sender is 1 to 11 letters, digits and spaces with"
                    " at least one letter (or give an E.164 number, or none for a leased one)",
                }
            )
        if request.send_at is not None:
            # "at most 14 days in the future ... in the past, the request will fail, unless the
            # value is less than 1 hour in the past"
            if request.send_at > now + SCHEDULE_AHEAD:
                problems.append({"field": "send_at", "error": "at most 14 days ahead"})
            elif request.send_at < now - SCHEDULE_LATE:
                problems.append({"field": "send_at", "error": "more than 1 hour in the past"})
        if problems:
            raise OptionsError(problems)
        return checked

    def build_send_request(
        self, request: SendRequest, account: ProviderAccount
    ) -> Sequence[HttpRequest]:
        """One POST per recipient (the Message resource has one `To`), Basic auth with the
        AccountSid and token. The callback URL is given for receipts, and for replies when the
        message goes from a leased number (no sender)."""
        credentials = f"{account.account_sid or ''}:{account.api_key or ''}".encode()
        options = request.options
        calls = []
        for recipient in request.to:
            body: dict[str, Any] = {
                "From": request.sender or "",
                "To": recipient,
                "Text": request.body,
                "ExternalId": request.client_ref,
                "DeliveryReceipt": options.get("delivery_receipt", True),
            }
            if request.callback_url is not None and body["DeliveryReceipt"]:
                body["DeliveryReceiptWebhookUri"] = request.callback_url
                body["DeliveryReceiptWebhookMethod"] = options.get(
                    "delivery_receipt_method", "POST"
                )
            if request.send_at is not None:
                body["Schedule"] = int(request.send_at.timestamp())
            if not request.sender:
                if request.callback_url is not None:
                    body["WebhookUri"] = request.callback_url
                    body["WebhookMethod"] = options.get("webhook_method", "POST")
                for name, field_name in LEASE_FIELDS.items():
                    if options.get(name) is not None:
                        body[field_name] = options[name]
            calls.append(
                HttpRequest(
                    method="POST",
                    path=f"/v2/Properties/{account.property_sid or ''}/Messages",
                    recipients=(recipient,),
                    json_body={k: v for k, v in body.items() if v is not None},
                    headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()},
                )
            )
        return calls

    def parse_send_response(
        self, call: HttpRequest, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome:
        answer = response.json()
        flat = _flatten(answer) if isinstance(answer, Mapping) else {}
        sid = str_or_none(first_present(flat, "message.messagesid", "messagesid"))
        if response.status == 200 and sid is not None:
            status = Status.SCHEDULED if request.send_at is not None else Status.ACCEPTED
            return SendOutcome(
                events=[
                    send_answer_event(
                        NAME,
                        request,
                        recipient=recipient,
                        status=status,
                        provider_status="200",
                        received_at=received_at,
                        provider_message_id=sid,
                    )
                    for recipient in call.recipients
                ]
            )
        if response.status >= 500 or not flat:
            return unanswered(NAME, call, request, response.describe(), received_at)
        # {"ResponseStatus": {"ErrorCode": ..., "Message": ...}} (their SDKs' error shape)
        code = str_or_none(first_present(flat, "responsestatus.errorcode", "errorcode"))
        message = str_or_none(first_present(flat, "responsestatus.message", "message"))
        return refused(
            NAME,
            call,
            request,
            received_at,
            status=Status.FAILED if response.status in (401, 403) else Status.REJECTED,
            error_code=code or str(response.status),
            error_message=message,
            failure_kind="permanent",
        )

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        payload = request.fields() if request.body.strip() else {}
        if isinstance(payload, list):
            return [event for item in payload for event in _webhook_events(item, {}, received_at)]
        return _webhook_events(payload, request.query_params(), received_at)

    def verify_callback(self, request: CallbackRequest, secret: str | None, now: datetime) -> bool:
        # Fone Dynamics documents no webhook authentication: the receiver's token and allow-list.
        return True

    def replay_key(self, request: CallbackRequest) -> str | None:
        return None  # its callbacks carry no signed time to replay


def _is_alphanumeric_sender(sender: str) -> bool:
    """Fone Dynamics' rules: 1 to 11 characters, A-Z a-z 0-9 and spaces, one letter at least."""
    return (
        1 <= len(sender) <= 11
        and all(c.isascii() and (c.isalnum() or c == " ") for c in sender)
        and any(c.isascii() and c.isalpha() for c in sender)
    )


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
