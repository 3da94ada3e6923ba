"""swift (Swift SMS Gateway, seed 003): SMS and MMS delivery reports (DLRs) and incoming messages.

Documented (docs.swiftsmsgateway.com /api/messaging/dlr/ and /api/messaging/incoming): a DLR is a
JSON POST with `delivery_status`, `from`, `id` (the report's own ULID), `sms: {id}` (the SMS it is
about, "if available"), `timestamp` (ISO with microseconds and `Z`), `to` and
`type: "sms_dlr"`; an MMS DLR has `mms: {id}`, `data` and `type: "mms_dlr"`. An incoming message
has `body`, `from`, `id`, `timestamp`, `to`, `type: "sms"` (or `mms` with `data` holding `body`).
Numbers come without `+`. Any 2xx answers it. Authentication is per "switch": none, Basic, or
Bearer with a configured secret (`Authorization` header).

Not documented: the values of `delivery_status` (only `delivered` is shown; SMPP words are
accepted too, as Swift also speaks SMPP), the statuses after `NEW`, and whether `sms.id` names the
message or one of its parts (`parts[].id` of the send answer): it is reported as the provider
message id, and storage resolves it to the message when it is a known part id.
"""

from __future__ import annotations

import base64
import hmac
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
    lower_keys,
    report_objects,
    str_or_none,
    timing,
    to_e164,
)
from normalizers.events import Event, EventType, FailureKind, Status, event_id

NAME = "swift"

DLR_TYPES = frozenset({"sms_dlr", "mms_dlr"})
INBOUND_TYPES = frozenset({"sms", "mms"})

# `new` is the send answer's first status; the rest are the usual lower-case DLR words and the
# SMPP `stat` words.
STATUS_MAP: Mapping[str, Status] = {
    "new": Status.ACCEPTED,
    "accepted": Status.ACCEPTED,
    "acceptd": Status.ACCEPTED,
    "scheduled": Status.SCHEDULED,
    "queued": Status.QUEUED,
    "sending": Status.QUEUED,
    "sent": Status.SENT,
    "enroute": Status.SENT,
    "delivered": Status.DELIVERED,
    "delivrd": Status.DELIVERED,
    "undelivered": Status.UNDELIVERED,
    "undeliv": Status.UNDELIVERED,
    "failed": Status.FAILED,
    "expired": Status.EXPIRED,
    "rejected": Status.REJECTED,
    "rejectd": Status.REJECTED,
    "deleted": Status.CANCELLED,
    "cancelled": Status.CANCELLED,
    "canceled": Status.CANCELLED,
    "unknown": Status.UNKNOWN,
}

# Error codes of the appendix (swift-sms-2-0-docs: /appendix/error-codes) that say whether a new
# send may succeed; read from an `error_code` field when one is present.
FAILURE_KINDS: Mapping[str, FailureKind] = {
    "temporary_error": "temporary",
    "internal_error": "temporary",
    "upstream_error": "temporary",
    "recipient_system_error": "temporary",
    "too_many_dispatches": "temporary",
    "time_restricted": "temporary",
    "expired": "temporary",
    "bad_message": "permanent",
    "recipient_error": "permanent",
    "unsupported_format": "permanent",
    "rejected": "permanent",
    "remote_did_not_found": "permanent",
    "remote_did_inactive": "permanent",
}


class Swift:
    name = NAME

    def build_send_request(self, request: SendRequest) -> Sequence[HttpRequest]:
        raise NotImplementedError("swift sending comes with the send API (issue 4)")

    def parse_send_response(
        self, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome:
        raise NotImplementedError("swift sending comes with the send API (issue 4)")

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        payload = request.fields()
        return [
            _webhook_event(lower_keys(item), received_at)
            for item in report_objects(payload, "a webhook object")
        ]

    def verify_callback(self, request: CallbackRequest, secret: str | None, now: datetime) -> bool:
        """With a secret configured, the switch's Bearer token, or the Basic password (the
        identity is not checked: the secret is what proves it)."""
        if secret is None:
            return True
        scheme, _, credentials = (request.header("authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(credentials.strip().encode(), secret.encode())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True)
            except ValueError:
                return False
            _identity, _, password = decoded.partition(b":")
            return hmac.compare_digest(password, secret.encode())
        return False


def _webhook_event(fields: dict[str, Any], received_at: datetime) -> Event:
    kind = str(fields.get("type") or "").lower()
    if not kind:
        kind = "sms_dlr" if "delivery_status" in fields else "sms"
    report_id = str_or_none(fields.get("id"))
    stamp = fields.get("timestamp")
    common: dict[str, Any] = {
        "provider": NAME,
        **timing(stamp, received_at),
    }
    if kind in INBOUND_TYPES:
        if report_id is None:
            raise ParseError("incoming message without id")
        data = fields.get("data")
        text = fields.get("body")
        if text is None and isinstance(data, Mapping):
            text = lower_keys(data).get("body")
        return Event(
            id=event_id(NAME, EventType.INBOUND, report_id),
            type=EventType.INBOUND,
            status=Status.RECEIVED,
            provider_status=kind,
            provider_message_id=report_id,
            sender=to_e164(fields.get("from")),
            recipient=to_e164(fields.get("to")),
            text=str_or_none(text),
            **common,
        )
    if kind not in DLR_TYPES:
        raise ParseError(f"unknown webhook type {fields.get('type')!r}")
    subject = fields.get("mms" if kind == "mms_dlr" else "sms") or fields.get("sms")
    message_id = (
        str_or_none(lower_keys(subject).get("id")) if isinstance(subject, Mapping) else None
    )
    word = str_or_none(first_present(fields, "delivery_status", "status"))
    if word is None:
        raise ParseError("delivery report without delivery_status")
    if message_id is None and report_id is None:
        raise ParseError("delivery report with neither its own id nor the message's")
    recipient = to_e164(fields.get("to"))
    error_code = str_or_none(fields.get("error_code"))
    return Event(
        id=event_id(NAME, EventType.STATUS, report_id, message_id, recipient, word, stamp),
        type=EventType.STATUS,
        status=STATUS_MAP.get(word.strip().lower(), Status.UNKNOWN),
        provider_status=word,
        # Without `sms` ("if available") the report cannot name its message: it is kept
        # under its own id, an orphan until an operator links it.
        provider_message_id=message_id or report_id,
        recipient=recipient,
        sender=to_e164(fields.get("from")),
        error_code=error_code,
        failure_kind=FAILURE_KINDS.get(error_code.lower()) if error_code else None,
        **common,
    )


PROVIDER = Swift()
