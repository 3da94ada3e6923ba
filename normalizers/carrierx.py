"""CarrierX (Core API v2, seed 004): SMS/MMS send requests and the SMS-object callbacks.

CarrierX calls the account's `sms` callback URL with the whole SMS object as JSON, once per status
change of an outbound message and once per inbound message (carrierx.com/documentation,
"Set up SMS Callbacks Using CarrierX Portal" and "SMS Object"). Legacy accounts see
`from_did`/`to_did` instead of `from`/`to`. No callback signature is documented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, HttpUrl

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
    decimal_string,
    first_present,
    int_or_none,
    lower_keys,
    refused,
    report_objects,
    str_or_none,
    timing,
    to_e164,
    unanswered,
    validated_options,
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


class Options(StrictOptions):
    """MMS fields of the SMS object (carrierx.com/documentation, "SMS Object")."""

    type: Literal["sms", "mms"] | None = None
    media_urls: list[HttpUrl] | None = Field(default=None, max_length=10)
    group_recipients: list[str] | None = Field(default=None, max_length=9)


PRICE_CURRENCY = "USD"  # "The price in US dollars determined for the message to be delivered."


# "An MMS message can have a text body of up to 1600 characters" (else it fails, unsent).
MMS_TEXT_MAX = 1600


class CarrierX:
    name = NAME
    signs_callbacks = False  # no documented signature: token and allow-list only
    schedules_sends = False  # no send time: the hub holds it

    def validate_options(
        self, options: Mapping[str, Any], request: SendRequest, now: datetime
    ) -> Mapping[str, Any]:
        checked = validated_options(Options, options)
        problems = []
        if not request.sender:
            problems.append({"field": "from", "error": "CarrierX sends from a rented DID"})
        if checked.get("group_recipients"):
            # One group MMS reaches every handset: one `to` only, or each would get it again.
            if len(request.to) != 1:
                problems.append({"field": "to", "error": "a group MMS has exactly one `to`"})
            if checked.get("type", "mms") != "mms":
                problems.append({"field": "options.type", "error": "a group message is mms"})
            checked["type"] = "mms"
            checked["group_recipients"] = [
                number.lstrip("+") for number in checked["group_recipients"]
            ]
        is_mms = bool(checked.get("media_urls") or checked.get("group_recipients")) or (
            checked.get("type") == "mms"
        )
        if is_mms and len(request.body) > MMS_TEXT_MAX:
            problems.append(
                {"field": "body", "error": f"an MMS text is at most {MMS_TEXT_MAX} characters"}
            )
        if problems:
            raise OptionsError(problems)
        return checked

    def build_send_request(
        self, request: SendRequest, account: ProviderAccount
    ) -> Sequence[HttpRequest]:
        """One POST per recipient: the SMS object has a single `to`. The callback URL is the
        account's `sms` callback (set in the portal), not a field of the message."""
        calls = []
        for recipient in request.to:
            body: dict[str, Any] = {
                "from": (request.sender or "").lstrip("+"),
                "to": recipient.lstrip("+"),
                "message": request.body,
                **request.options,
            }
            if request.client_ref is not None:
                body["user_data"] = request.client_ref
            calls.append(
                HttpRequest(
                    method="POST",
                    path="/core/v2/sms/messages",
                    recipients=(recipient,),
                    json_body=body,
                    headers={"Authorization": f"Bearer {account.api_key or ''}"},
                )
            )
        return calls

    def parse_send_response(
        self, call: HttpRequest, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome:
        answer = response.json()
        if 200 <= response.status < 300:
            if not isinstance(answer, Mapping):  # sent or not, the answer does not say
                return unanswered(NAME, call, request, response.describe(), received_at)
            events = _sms_object_events(answer, received_at)
            return SendOutcome(events=events, segments=events[0].segments if events else None)
        # Error bodies are not documented: keep whatever message they carry.
        message = None
        if isinstance(answer, Mapping):
            message = str_or_none(first_present(lower_keys(answer), "message", "error", "errors"))
        if message is None:
            message = response.body.decode("utf-8", "replace")[:500] or None
        if response.status >= 500:
            return unanswered(
                NAME, call, request, f"HTTP {response.status}: {message}", received_at
            )
        return refused(
            NAME,
            call,
            request,
            received_at,
            status=Status.REJECTED,
            error_code=str(response.status),
            error_message=message,
            failure_kind="permanent",
        )

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

    def replay_key(self, request: CallbackRequest) -> str | None:
        return None  # its callbacks carry no signed time to replay


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
