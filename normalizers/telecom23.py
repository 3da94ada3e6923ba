"""telecom23 (23 Telecom, seed 001): the delivery webhook, the status polling answer, and the
statuses of the send answer.

Documented (docs.23telecom.co.uk /webhooks/delivery, /webhooks/postbacks, /webhooks/security,
/reference/delivery-statuses, /sms/status): the delivery webhook is a JSON POST
(`User-Agent: 23Telecom-Webhooks/1.0`) whose fields are chosen per account (default message_id,
recipient, sender_id, status, status_code, num_parts, cost, timestamp; optional
telecom_message_id, workspace_id), so any of them may be missing. A postback URL may carry
placeholders in its query (`?phone=...&status=...`) while the JSON body is still POSTed: the body
wins, the query fills what it lacks, unless the callback is signed (the signature does not cover
the query). Signing is optional: `X-Webhook-Timestamp` (Unix seconds) and
`X-Webhook-Signature: sha256=<hex>` = HMAC-SHA256(secret, "{timestamp}.{raw body}"). They wait 5 s
for a 2xx, then retry twice (10 s, 30 s).

No inbound (MO) webhook is documented. The form accepted here is modelled on the delivery
webhook's own naming (message_id, sender/from = the handset, recipient/to = our number, message =
the text) and on what peers send; it is recognised by `direction: inbound` or `type: inbound|mo`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

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
from normalizers.events import Event, EventType, FailureKind, Price, Status, event_id

NAME = "telecom23"

# Delivery statuses (/reference/delivery-statuses), the send answer's per-recipient statuses, and
# the lower-case aliases the message list accepts. Their UNKNOWN is documented as FINAL ("final
# status unknown": the carrier never confirmed), unlike our non-final `unknown`: it maps to
# `undelivered`, the honest final answer for a message nobody saw arrive. ENROUTE and ACCEPTD are
# SMPP's intermediate words, which their reconciliation mentions.
STATUS_MAP: Mapping[str, Status] = {
    "accepted": Status.ACCEPTED,
    "acceptd": Status.ACCEPTED,
    "pending": Status.QUEUED,
    "sent": Status.SENT,
    "enroute": Status.SENT,
    "delivrd": Status.DELIVERED,
    "delivered": Status.DELIVERED,
    "undeliv": Status.UNDELIVERED,
    "undelivered": Status.UNDELIVERED,
    "unknown": Status.UNDELIVERED,
    "rejectd": Status.REJECTED,
    "rejected": Status.REJECTED,
    "blocked_country": Status.REJECTED,
    "expired": Status.EXPIRED,
    "deleted": Status.CANCELLED,
    "failed": Status.FAILED,
    "queue_error": Status.FAILED,
    "config_error": Status.FAILED,
    "db_error": Status.FAILED,
}

# Which failures a new send may cure. blocked_country and config_error need the account changed;
# queue_error and db_error are their internal faults ("retry the whole request"); a carrier's
# UNDELIV (phone off, invalid number) and EXPIRED (unreachable) may pass later.
FAILURE_KINDS: Mapping[str, FailureKind] = {
    "blocked_country": "permanent",
    "config_error": "permanent",
    "rejectd": "permanent",
    "rejected": "permanent",
    "queue_error": "temporary",
    "db_error": "temporary",
    "failed": "temporary",
    "undeliv": "temporary",
    "undelivered": "temporary",
    "expired": "temporary",
}

# Account currency: callbacks carry no currency field and every documented example is in EUR.
PRICE_CURRENCY = "EUR"

SIGNATURE_TOLERANCE_S = 300  # "reject stale timestamps (e.g. older than 5 minutes)"

INBOUND_MARKERS = frozenset({"inbound", "mo", "incoming", "received"})

MAX_RECIPIENTS = 100  # per POST /api/v1/sms/send


class Options(StrictOptions):
    """23 Telecom's send API takes nothing beyond to, message and sender_id."""


class Telecom23:
    name = NAME
    signs_callbacks = True  # a signing secret is checked (verify_callback)
    schedules_sends = False  # no send time: the hub holds it

    def validate_options(
        self, options: Mapping[str, Any], request: SendRequest, now: datetime
    ) -> Mapping[str, Any]:
        checked = validated_options(Options, options)
        if request.sender is None:
            raise OptionsError([{"field": "from", "error": "23 Telecom needs a sender_id"}])
        if not (SENDER_NUMBER.fullmatch(request.sender) or SENDER_NAME.fullmatch(request.sender)):
            raise OptionsError(
                [
                    {
                        "field": "from",
                        "error": "a 23 Telecom sender_id is up to 11 letters and digits, or a"
                        " phone number",
                    }
                ]
            )
        return checked

    def build_send_request(
        self, request: SendRequest, account: ProviderAccount
    ) -> Sequence[HttpRequest]:
        """Batches of at most 100 recipients, each an all-or-nothing request. The webhook URL is
        the account's (PUT /user/webhooks), not a field of the message."""
        recipients = list(request.to)
        return [
            HttpRequest(
                method="POST",
                path="/api/v1/sms/send",
                recipients=tuple(batch),
                json_body={"to": batch, "message": request.body, "sender_id": request.sender},
                headers={"X-API-Key": account.api_key or ""},
            )
            for batch in (
                recipients[start : start + MAX_RECIPIENTS]
                for start in range(0, len(recipients), MAX_RECIPIENTS)
            )
        ]

    def parse_send_response(
        self, call: HttpRequest, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome:
        answer = response.json()
        fields = lower_keys(answer) if isinstance(answer, Mapping) else {}
        if response.status == 200:
            results = fields.get("results")
            if isinstance(results, list):
                return _send_results(call, request, results, received_at)
            accepted = fields.get("messages")  # "accepted messages only (backward-compatible)"
            if isinstance(accepted, list):
                return _send_results(call, request, _as_results(accepted), received_at)
            # Accepted, but which recipients we cannot tell: unknown, never a refusal.
            return unanswered(NAME, call, request, response.describe(), received_at)
        code = str_or_none(fields.get("error_code"))
        description = str_or_none(fields.get("description"))
        if code == "DB_ERROR":
            # "A multi-recipient request is all-or-nothing ... you get 500 DB_ERROR and nothing
            # was sent - simply retry the entire request": the one answer safe to retry.
            return refused(
                NAME,
                call,
                request,
                received_at,
                status=Status.FAILED,
                error_code=code,
                error_message=description,
                failure_kind="temporary",
                retry=True,
            )
        if code is None and response.status >= 500:
            return unanswered(NAME, call, request, response.describe(), received_at)
        kind: FailureKind = "temporary" if code == "INSUFFICIENT_BALANCE" else "permanent"
        details = {name: fields[name] for name in BALANCE_FIELDS if name in fields}
        outcome = refused(
            NAME,
            call,
            request,
            received_at,
            status=Status.FAILED if response.status in (402, 403) else Status.REJECTED,
            error_code=code or str(response.status),
            error_message=_with_balance(description, details),
            failure_kind=kind,
        )
        return dataclasses.replace(
            outcome, details=details, about_account=code == "INSUFFICIENT_BALANCE"
        )

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        payload = request.fields() if request.body.strip() else {}
        # A signed callback's query is not covered by its signature (timestamp and body only):
        # anyone could add fields there, so it fills nothing.
        signed = request.header("x-webhook-signature") is not None
        query = {} if signed else {k.lower(): v for k, v in request.query_params().items()}
        events: list[Event] = []
        for report in report_objects(payload, "a report object"):
            fields = lower_keys(report)
            if isinstance(fields.get("status"), bool) and isinstance(
                fields.get("message"), Mapping
            ):
                fields = lower_keys(fields["message"])  # the status polling answer
            # Postback placeholders fill what the body lacks; the body wins.
            merged = {**query, **{k: v for k, v in fields.items() if v is not None}}
            events.append(_report_event(merged, received_at))
        return events

    def verify_callback(self, request: CallbackRequest, secret: str | None, now: datetime) -> bool:
        if secret is None:
            return True  # signing is optional: the receiver's token and allow-list apply
        timestamp = request.header("x-webhook-timestamp") or ""
        signature = request.header("x-webhook-signature") or ""
        if not timestamp.isdigit() or not signature.startswith("sha256="):
            return False
        if abs(now.timestamp() - int(timestamp)) > SIGNATURE_TOLERANCE_S:
            return False
        expected = hmac.new(
            secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
        ).hexdigest()
        return hmac.compare_digest(signature.removeprefix("sha256=").lower(), expected)

    def replay_key(self, request: CallbackRequest) -> str | None:
        return _replay_key(request)


def _replay_key(request: CallbackRequest) -> str | None:
    timestamp = request.header("x-webhook-timestamp")
    signature = request.header("x-webhook-signature")
    if not timestamp or not signature:
        return None
    return f"{timestamp}.{signature.lower()}"


def _report_event(fields: dict[str, Any], received_at: datetime) -> Event:
    message_id = str_or_none(
        first_present(fields, "message_id", "client_message_id", "telecom_message_id")
    )
    if message_id is None:
        raise ParseError("report without message_id")
    stamp = first_present(fields, "timestamp", "delivered_at", "created_at")
    common: dict[str, Any] = {
        "provider": NAME,
        "provider_message_id": message_id,
        **timing(stamp, received_at),
    }
    marker = str(first_present(fields, "direction", "type") or "").lower()
    if marker in INBOUND_MARKERS:
        return Event(
            id=event_id(NAME, EventType.INBOUND, message_id),
            type=EventType.INBOUND,
            status=Status.RECEIVED,
            provider_status=marker,
            sender=to_e164(first_present(fields, "from", "sender", "phone")),
            recipient=to_e164(first_present(fields, "to", "recipient", "sender_id")),
            text=str_or_none(first_present(fields, "message", "text", "body")),
            **common,
        )
    word = str_or_none(fields.get("status"))
    if word is None:
        raise ParseError("report without status")
    status = STATUS_MAP.get(word.strip().lower(), Status.UNKNOWN)
    status_code = str_or_none(fields.get("status_code"))
    recipient = to_e164(first_present(fields, "recipient", "phone", "to"))
    cost = decimal_string(fields.get("cost"))
    return Event(
        id=event_id(NAME, EventType.STATUS, message_id, recipient, word, status_code, stamp),
        type=EventType.STATUS,
        status=status,
        provider_status=word,
        recipient=recipient,
        sender=to_e164(first_present(fields, "sender_id", "from")),
        error_code=status_code if status is not Status.DELIVERED else None,
        segments=int_or_none(first_present(fields, "num_parts", "segments")),
        price=Price(amount=cost, currency=PRICE_CURRENCY) if cost is not None else None,
        failure_kind=FAILURE_KINDS.get(word.strip().lower()),
        **common,
    )


PROVIDER = Telecom23()


# "Alphanumeric sender ID (max 11 chars) or phone number".
SENDER_NAME = re.compile(r"[A-Za-z0-9]{1,11}", re.ASCII)
SENDER_NUMBER = re.compile(r"\+?[0-9]{3,15}", re.ASCII)

# What a 402 INSUFFICIENT_BALANCE answer carries besides its code: kept for the caller.
BALANCE_FIELDS = (
    "balance",
    "estimated_cost",
    "currency",
    "total_recipients",
    "billable_recipients",
    "segments",
)


def _with_balance(description: str | None, details: Mapping[str, Any]) -> str | None:
    """The description, with the balance and the cost when the answer gives them."""
    if "balance" not in details and "estimated_cost" not in details:
        return description
    currency = f" {details['currency']}" if details.get("currency") else ""
    money = (
        f"balance {details.get('balance')}{currency},"
        f" estimated cost {details.get('estimated_cost')}{currency}"
    )
    return f"{description} ({money})" if description else money


def _as_results(accepted: list[Any]) -> list[Any]:
    """The `messages` array (accepted ones only) read as `results`: each one accepted."""
    return [
        {
            "dnis": item.get("dnis"),
            "message_id": item.get("message_id"),
            "segments": item.get("segment_num"),
            "status": "accepted",
        }
        for item in accepted
        if isinstance(item, Mapping)
    ]


def _send_results(
    call: HttpRequest,
    request: SendRequest,
    results: list[Any],
    received_at: datetime,
) -> SendOutcome:
    by_number = {to_e164(item.get("dnis")): item for item in results if isinstance(item, Mapping)}
    events = []
    for recipient in call.recipients:
        item = by_number.get(to_e164(recipient))
        if item is None:
            events.append(missing_result(NAME, request, recipient, received_at))
            continue
        word = str(item.get("status") or "")
        status = STATUS_MAP.get(word.lower(), Status.UNKNOWN)
        events.append(
            send_answer_event(
                NAME,
                request,
                recipient=recipient,
                status=status,
                provider_status=word,
                received_at=received_at,
                provider_message_id=str_or_none(item.get("message_id")),
                error_code=None if status is Status.ACCEPTED else word,
                failure_kind=FAILURE_KINDS.get(word.lower()),
                segments=int_or_none(item.get("segments")),
            )
        )
    # Per message, as we count: the summary's total_segments adds up every recipient's.
    per_message = max((e.segments or 0 for e in events), default=0)
    return SendOutcome(events=events, segments=per_message or None)
