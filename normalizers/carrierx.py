"""CarrierX (Core API v2, seed 004): SMS/MMS send requests and the SMS-object callbacks.

CarrierX calls the account's `sms` callback URL with the whole SMS object as JSON, once per status
change of an outbound message and once per inbound message (carrierx.com/documentation,
"Set up SMS Callbacks Using CarrierX Portal" and "SMS Object"). Legacy accounts see
`from_did`/`to_did` instead of `from`/`to`. No callback signature is documented.
"""

from __future__ import annotations

import json
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
    decimal_string,
    first_present,
    int_or_none,
    lower_keys,
    report_objects,
    str_or_none,
    timing,
    to_e164,
)
from normalizers.events import Event, EventType, Price, Status, event_id

NAME = "carrierx"

# The documented words are queued (send answer), sent, delivered and received. CarrierX does not
# publish its failure words; the others below are the usual words of SMS-object APIs of its kind
# (SignalWire, Twilio), so that they map rather than fall to `unknown` if they appear.
STATUS_MAP: Mapping[str, Status] = {
    "queued": Status.QUEUED,
    "accepted": Status.ACCEPTED,
    "scheduled": Status.SCHEDULED,
    "sending": Status.QUEUED,
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "undelivered": Status.UNDELIVERED,
    "failed": Status.FAILED,
    "rejected": Status.REJECTED,
    "expired": Status.EXPIRED,
    "canceled": Status.CANCELLED,
    "cancelled": Status.CANCELLED,
    "receiving": Status.RECEIVED,
    "received": Status.RECEIVED,
}

PRICE_CURRENCY = "USD"  # "The price in US dollars determined for the message to be delivered."


class CarrierX:
    name = NAME

    def build_send_request(self, request: SendRequest) -> Sequence[HttpRequest]:
        """One POST per recipient: the SMS object has a single `to`."""
        calls = []
        for recipient in request.to:
            body: dict[str, Any] = {
                "from": request.sender.lstrip("+"),
                "to": recipient.lstrip("+"),
                "message": request.body,
            }
            if request.client_ref is not None:
                body["user_data"] = request.client_ref
            for option in ("media_urls", "group_recipients", "type"):
                if option in request.options:
                    body[option] = request.options[option]
            calls.append(HttpRequest(method="POST", path="/core/v2/sms/messages", json_body=body))
        return calls

    def parse_send_response(
        self, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome:
        if 200 <= response.status < 300:
            sms = _decode_object(response.body)
            return SendOutcome(events=_sms_object_events(sms, received_at))
        error_text = response.body.decode("utf-8", errors="replace")[:500]
        events = [
            Event(
                id=event_id(NAME, "send-refused", recipient, response.status, error_text),
                type=EventType.STATUS,
                provider=NAME,
                status=Status.REJECTED if 400 <= response.status < 500 else Status.FAILED,
                provider_status=str(response.status),
                occurred_at=received_at,
                received_at=received_at,
                occurred_at_source="received",
                recipient=to_e164(recipient),
                sender=to_e164(request.sender),
                error_code=str(response.status),
                error_message=error_text or None,
                client_ref=request.client_ref,
                failure_kind="permanent" if 400 <= response.status < 500 else "temporary",
            )
            for recipient in request.to
        ]
        return SendOutcome(events=events)

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        payload = request.fields()
        return [
            event
            for sms in report_objects(payload, "an SMS object")
            for event in _sms_object_events(sms, received_at)
        ]

    def verify_callback(self, request: CallbackRequest, secret: str | None, now: datetime) -> bool:
        # CarrierX documents no signature: authenticity comes from the secret token in the
        # callback path and the source-address allow-list, both checked by the receiver.
        return True


def _decode_object(body: bytes) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ParseError(f"send answer is not JSON: {error}") from None
    if not isinstance(data, Mapping):
        raise ParseError("send answer is not an SMS object")
    return data


def _sms_object_events(raw: Mapping[str, Any], received_at: datetime) -> list[Event]:
    sms = lower_keys(raw)
    sid = first_present(sms, "message_sid", "sid")
    status_word = first_present(sms, "status")
    if sid is None or status_word is None:
        raise ParseError("SMS object without message_sid or status")
    sid, provider_status = str(sid), str(status_word)
    status = STATUS_MAP.get(provider_status.strip().lower(), Status.UNKNOWN)
    direction = str(sms.get("direction") or "").lower()
    inbound = direction == "inbound" or status is Status.RECEIVED

    stamp = first_present(sms, "date_status_changed", "date_changed")
    if inbound:
        stamp = first_present(sms, "date_created", "date_status_changed", "date_changed")

    sender = to_e164(first_present(sms, "from", "from_did"))
    to = to_e164(first_present(sms, "to", "to_did"))
    common: dict[str, Any] = {
        "provider": NAME,
        "provider_message_id": sid,
        "provider_status": provider_status,
        **timing(stamp, received_at),
        "segments": int_or_none(sms.get("message_segments")),
        "price": _price(sms.get("price")),
        "client_ref": str_or_none(sms.get("user_data")),
    }
    if inbound:
        return [
            Event(
                id=event_id(NAME, EventType.INBOUND, sid),
                type=EventType.INBOUND,
                status=Status.RECEIVED,
                recipient=to,
                sender=sender,
                text=str_or_none(sms.get("message")),
                **common,
            )
        ]
    # A group MMS is one message_sid reaching several handsets: each is a recipient of its own.
    recipients = [to, *(to_e164(number) for number in _group(sms.get("group_recipients")))]
    distinct: list[str | None] = [
        r for r in dict.fromkeys(recipients) if r is not None and r != sender
    ] or [None]
    return [
        Event(
            id=event_id(NAME, EventType.STATUS, sid, recipient, provider_status, stamp),
            type=EventType.STATUS,
            status=status,
            recipient=recipient,
            sender=sender,
            **common,
        )
        for recipient in distinct
    ]


def _group(value: object) -> list[object]:
    """group_recipients is a JSON list; a form or query string can only carry it as text."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [part for part in value.split(",") if part.strip()]
    return []


def _price(value: object) -> Price | None:
    amount = decimal_string(value)
    return Price(amount=amount, currency=PRICE_CURRENCY) if amount is not None else None


PROVIDER = CarrierX()
