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
    ProviderAccount,
    SendOutcome,
    SendRequest,
    StrictOptions,
    first_present,
    lower_keys,
    missing_result,
    refused,
    report_objects,
    send_answer_event,
    str_or_none,
    timing,
    to_e164,
    unanswered,
    validated_options,
)
from normalizers.events import Event, EventType, FailureKind, Status, event_id, rfc3339

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


class Options(StrictOptions):
    """Send API fields beyond ours (seed 003)."""

    request_dlr: bool | None = None


class Swift:
    name = NAME
    signs_callbacks = True  # a signing secret is checked (verify_callback)
    schedules_sends = False  # no send time: the hub holds it

    def validate_options(
        self, options: Mapping[str, Any], request: SendRequest, now: datetime
    ) -> Mapping[str, Any]:
        return validated_options(Options, options)

    def build_send_request(
        self, request: SendRequest, account: ProviderAccount
    ) -> Sequence[HttpRequest]:
        """One POST for every recipient (`to` is a list). DLRs go to the switch's webhook,
        configured on the account, not per message."""
        body: dict[str, Any] = {
            "body": request.body,
            "to": [number.lstrip("+") for number in request.to],
            "request_dlr": request.options.get("request_dlr", True),
        }
        if request.sender:
            body["from"] = request.sender.lstrip("+")
        if request.client_ref is not None:
            body["id"] = request.client_ref
        if request.expires_at is not None:
            body["expires_at"] = rfc3339(request.expires_at)
        return [
            HttpRequest(
                method="POST",
                path="/v1/sms",
                recipients=tuple(request.to),
                json_body=body,
                headers={"Authorization": f"Bearer {account.api_key or ''}"},
            )
        ]

    def parse_send_response(
        self, call: HttpRequest, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome:
        answer = response.json()
        fields = lower_keys(answer) if isinstance(answer, Mapping) else {}
        results = fields.get("results")
        if response.status in (200, 207, 422) and isinstance(results, list):
            return _send_results(call, request, results, received_at)
        if response.status >= 500 or not fields:
            return unanswered(NAME, call, request, response.describe(), received_at)
        code = str_or_none(first_present(fields, "error_code", "code")) or str(response.status)
        return refused(
            NAME,
            call,
            request,
            received_at,
            status=Status.FAILED,
            error_code=code,
            error_message=str_or_none(first_present(fields, "message", "error")),
            failure_kind=FAILURE_KINDS.get(code.lower(), "permanent"),
        )

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

    def replay_key(self, request: CallbackRequest) -> str | None:
        return None  # its callbacks carry no signed time to replay


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


def _send_results(
    call: HttpRequest, request: SendRequest, results: list[Any], received_at: datetime
) -> SendOutcome:
    """200 all sent, 207 some, 422 none: each result says OK or its error code."""
    by_number = {
        to_e164(item.get("to")): lower_keys(item) for item in results if isinstance(item, Mapping)
    }
    events: list[Event] = []
    parts: dict[str, list[str]] = {}
    for recipient in call.recipients:
        item = by_number.get(to_e164(recipient))
        if item is None:
            events.append(missing_result(NAME, request, recipient, received_at))
            continue
        code = str(item.get("error_code") or "missing")
        message_id = str_or_none(item.get("id"))
        if code.lower() == "ok":
            word = str(item.get("status") or "NEW")
            part_ids = [
                str(part["id"])
                for part in item.get("parts") or []
                if isinstance(part, Mapping) and part.get("id") is not None
            ]
            if message_id is not None and part_ids:
                parts[recipient] = part_ids
            events.append(
                send_answer_event(
                    NAME,
                    request,
                    recipient=recipient,
                    status=STATUS_MAP.get(word.lower(), Status.UNKNOWN),
                    provider_status=word,
                    received_at=received_at,
                    provider_message_id=message_id,
                    segments=len(part_ids) or None,
                )
            )
            continue
        kind = FAILURE_KINDS.get(code.lower())
        events.append(
            send_answer_event(
                NAME,
                request,
                recipient=recipient,
                status=Status.FAILED if kind == "temporary" else Status.REJECTED,
                provider_status=code,
                received_at=received_at,
                provider_message_id=message_id,
                error_code=code,
                failure_kind=kind or "permanent",
            )
        )
    accepted = [e for e in events if e.status not in (Status.FAILED, Status.REJECTED)]
    # (a recipient missing from the answer is `unknown`, which does not make it a refusal)
    first_error = next((e for e in events if e.error_code), None)
    return SendOutcome(
        events=events,
        refused=not accepted,
        error_code=first_error.error_code if first_error and not accepted else None,
        parts=parts,
        segments=max((e.segments or 0 for e in events), default=0) or None,
    )
