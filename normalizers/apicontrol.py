"""apicontrol (Barritel SMS API, seed 000): delivery reports of the four `delivery_report` kinds
and inbound SMS.

Documented (sms.doc.barritel.com, "webhookDeliveryReport"; smsapi.doc.barritel.com,
"webhookInboundSms"): a delivery report is a JSON POST with `tstamp`, `message_type`, `ref` (the
client reference given at send time), `messageID` (integer), `balance_used`, `statuses` (object)
and `callback_type`; an inbound SMS has `messageID`, `from`, `to`, `body`, `ref` (a label of OUR
number, not a client reference), `tstamp`, `callback_type: "inbound_message"`. Numbers come with or
without `+`; `tstamp` as Unix seconds, `2024-06-03 10:05:22`, ISO with `Z` or with `-0300`.

Not documented, modelled on Sinch's report kinds (the same split): `statuses` is
`{msisdn: status word}` for `details`, `per_recipient_final` and `per_recipient`, and
`{status word: count}` for `summary`. The shape is told by its values (numbers are counts), not
by `callback_type`, so either shape is read whatever the kind; a Sinch-style list
`[{"status", "count", "recipients"}]` is read too. Barritel retries on no answer, 429 and 5xx, never
on 3xx/4xx: a 4xx loses the report for good.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import Field

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
    lower_keys,
    refused,
    report_objects,
    send_answer_event,
    str_or_none,
    timing,
    to_e164,
    unanswered,
    validated_options,
)
from normalizers.events import (
    FINAL_STATUSES,
    STATUS_RANK,
    Event,
    EventType,
    FailureKind,
    Status,
    event_id,
    rfc3339,
)

NAME = "apicontrol"

# The words of GET /sms/message/{id}/status (pending ... unknown) and of the send API's report
# kinds. `submitted` is handed to the SMSC; `aborted` is Sinch's word for a send the platform gave
# up (their codes 402-412); `deleted` is the SMPP DELETED (removed from the SMSC before delivery).
STATUS_MAP: Mapping[str, Status] = {
    "pending": Status.QUEUED,
    "queued": Status.QUEUED,
    "scheduled": Status.SCHEDULED,
    "paused": Status.SCHEDULED,
    "submitted": Status.SENT,
    "dispatched": Status.SENT,
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "undelivered": Status.UNDELIVERED,
    "cancelled": Status.CANCELLED,
    "canceled": Status.CANCELLED,
    "deleted": Status.CANCELLED,
    "expired": Status.EXPIRED,
    "aborted": Status.FAILED,
    "rejected": Status.REJECTED,
    "failed": Status.FAILED,
    "unknown": Status.UNKNOWN,
}

# No error codes are documented; the status word alone says whether a new send may succeed.
FAILURE_KINDS: Mapping[Status, FailureKind] = {
    Status.REJECTED: "permanent",
    Status.EXPIRED: "temporary",
}

INBOUND_TYPES = frozenset({"inbound_message", "inbound", "mo"})


class Options(StrictOptions):
    """The send API's own fields beyond ours (seed 000)."""

    delivery_report: (
        Literal["summary", "details", "per_recipient_final", "per_recipient"] | None
    ) = None
    num_parts_max: int | None = Field(default=None, ge=1)
    ttl: int | None = Field(default=None, ge=1)  # seconds; sent as the string the API takes
    paused: bool | None = None


class ApiControl:
    name = NAME
    signs_callbacks = False  # no documented signature: token and allow-list only
    schedules_sends = True  # send_at (and paused)

    def validate_options(
        self, options: Mapping[str, Any], request: SendRequest, now: datetime
    ) -> Mapping[str, Any]:
        checked = validated_options(Options, options)
        if checked.get("ttl") is not None and request.expires_at is not None:
            raise OptionsError(
                [{"field": "options.ttl", "error": "give ttl or expires_at, not both"}]
            )
        return checked

    def build_send_request(
        self, request: SendRequest, account: ProviderAccount
    ) -> Sequence[HttpRequest]:
        """One POST for every recipient; `ref` and `callbackURL` travel with the message. The
        seed does not say how the API key is given: as a Bearer token."""
        options = dict(request.options)
        if options.get("ttl") is not None:
            options["ttl"] = str(options["ttl"])
        body: dict[str, Any] = {
            "to": list(request.to),
            "from": request.sender,
            "body": request.body,
            **options,
        }
        if request.client_ref is not None:
            body["ref"] = request.client_ref
        if request.callback_url is not None:
            body["callbackURL"] = request.callback_url
        if request.send_at is not None:
            body["send_at"] = rfc3339(request.send_at)
        if request.expires_at is not None:
            body["expires_at"] = rfc3339(request.expires_at)
        return [
            HttpRequest(
                method="POST",
                path="/sms/message",
                recipients=tuple(request.to),
                # `delivery_report: null` turns reports off: it is the one null that is sent.
                json_body={
                    k: v for k, v in body.items() if v is not None or k == "delivery_report"
                },
                headers={"Authorization": f"Bearer {account.api_key or ''}"},
            )
        ]

    def parse_send_response(
        self, call: HttpRequest, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome:
        answer = response.json()
        fields = lower_keys(answer) if isinstance(answer, Mapping) else {}
        if response.status == 201 and fields.get("messageid") is not None:
            message_id = str(fields["messageid"])
            segments = int_or_none(fields.get("num_parts"))
            # Paused: "will not be sent until released", as a future send_at.
            later = request.send_at is not None or bool(request.options.get("paused"))
            status = Status.SCHEDULED if later else Status.ACCEPTED
            return SendOutcome(
                events=[
                    send_answer_event(
                        NAME,
                        request,
                        recipient=recipient,
                        status=status,
                        provider_status=str(response.status),
                        received_at=received_at,
                        provider_message_id=message_id,
                        segments=segments,
                    )
                    for recipient in call.recipients
                ],
                segments=segments,
                recipients=int_or_none(fields.get("num_recipients")),
            )
        if response.status == 200:
            # 200, not 201: the message needs more parts than num_parts_max, nothing was sent.
            info = str_or_none(fields.get("info")) or (
                f"{fields.get('num_parts')} parts needed, num_parts_max is "
                f"{fields.get('num_parts_max')}"
            )
            return refused(
                NAME,
                call,
                request,
                received_at,
                status=Status.REJECTED,
                error_code="num_parts_max",
                error_message=info,
                failure_kind="permanent",
            )
        if response.status >= 500 or not fields:
            return unanswered(NAME, call, request, response.describe(), received_at)
        # 400/403: status_msg, error, type, arguement (sic), bad_value, info; 401/404/405 fewer.
        code = str_or_none(fields.get("type")) or str(fields.get("status_code") or response.status)
        message = "; ".join(
            f"{name}: {fields[name]}" if name in ("arguement", "bad_value") else str(fields[name])
            for name in ("status_msg", "error", "arguement", "bad_value", "info")
            if fields.get(name) not in (None, "")
        )
        return refused(
            NAME,
            call,
            request,
            received_at,
            status=Status.REJECTED,
            error_code=code,
            error_message=message or None,
            failure_kind="permanent",
        )

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        payload = request.fields()
        return [
            event
            for report in report_objects(payload, "a report object")
            for event in _report_events(lower_keys(report), received_at)
        ]

    def verify_callback(self, request: CallbackRequest, secret: str | None, now: datetime) -> bool:
        # Barritel documents no callback signature: the receiver's path token and allow-list.
        return True

    def replay_key(self, request: CallbackRequest) -> str | None:
        return None  # its callbacks carry no signed time to replay


def _report_events(report: dict[str, Any], received_at: datetime) -> list[Event]:
    message_id = str_or_none(first_present(report, "messageid", "message_id", "id"))
    if message_id is None:
        raise ParseError("report without messageID")
    stamp = first_present(report, "tstamp", "timestamp")
    callback_type = str(report.get("callback_type") or "").lower()
    common: dict[str, Any] = {
        "provider": NAME,
        "provider_message_id": message_id,
        **timing(stamp, received_at),
    }
    if callback_type in INBOUND_TYPES or ("statuses" not in report and "body" in report):
        return [
            Event(
                id=event_id(NAME, EventType.INBOUND, message_id),
                type=EventType.INBOUND,
                status=Status.RECEIVED,
                provider_status=callback_type or "inbound_message",
                recipient=to_e164(report.get("to")),
                sender=to_e164(report.get("from")),
                text=str_or_none(report.get("body")),
                **common,
            )
        ]
    statuses = report.get("statuses")
    if statuses is None:
        raise ParseError("delivery report without statuses")
    per_recipient, counts = _read_statuses(statuses)
    common["client_ref"] = str_or_none(report.get("ref"))
    if per_recipient:
        return [_recipient_event(msisdn, word, stamp, common) for msisdn, word in per_recipient]
    return [_summary_event(counts, stamp, common)]


def _read_statuses(statuses: object) -> tuple[list[tuple[str, str]], Counter[str]]:
    """(msisdn, word) pairs when the report names recipients, else counts per word."""
    pairs: list[tuple[str, str]] = []
    counts: Counter[str] = Counter()
    if isinstance(statuses, Mapping):
        for key, value in statuses.items():
            if isinstance(value, Mapping):  # {msisdn: {"status": word, ...}}
                value = first_present(lower_keys(value), "status", "state")
            count = int_or_none(value)
            if count is not None:
                counts[str(key)] += count
            elif isinstance(value, str) and value:
                pairs.append((str(key), value))
            else:
                raise ParseError(f"cannot read the status of {key!r}: {value!r}")
    elif isinstance(statuses, list):  # Sinch style: [{"status", "count", "recipients"}]
        for entry in statuses:
            if not isinstance(entry, Mapping):
                raise ParseError("statuses list holds a non-object")
            item = lower_keys(entry)
            word = str_or_none(item.get("status"))
            if word is None:
                raise ParseError("statuses entry without status")
            recipients = item.get("recipients")
            if isinstance(recipients, list) and recipients:
                pairs.extend((str(msisdn), word) for msisdn in recipients)
            else:
                counts[word] += int_or_none(item.get("count")) or 0
    else:
        raise ParseError(f"statuses is a {type(statuses).__name__}, not an object or list")
    if not pairs and not counts:
        raise ParseError("statuses is empty")
    return pairs, counts


def _status_of(word: str) -> Status:
    return STATUS_MAP.get(word.strip().lower(), Status.UNKNOWN)


def _recipient_event(msisdn: str, word: str, stamp: object, common: dict[str, Any]) -> Event:
    status = _status_of(word)
    recipient = to_e164(msisdn)
    return Event(
        id=event_id(NAME, EventType.STATUS, common["provider_message_id"], recipient, word, stamp),
        type=EventType.STATUS,
        status=status,
        provider_status=word,
        recipient=recipient,
        failure_kind=FAILURE_KINDS.get(status),
        **common,
    )


def _summary_event(words: Counter[str], stamp: object, common: dict[str, Any]) -> Event:
    counts: Counter[str] = Counter()
    for word, number in words.items():
        counts[str(_status_of(word))] += number
    status = _summary_status(counts)
    provider_status = ",".join(f"{word}:{words[word]}" for word in sorted(words))
    return Event(
        id=event_id(NAME, EventType.SUMMARY, common["provider_message_id"], provider_status, stamp),
        type=EventType.SUMMARY,
        status=status,
        provider_status=provider_status,
        counts=dict(sorted(counts.items())),
        **common,
    )


def _summary_status(counts: Counter[str]) -> Status:
    """The message as a whole: while some recipient is still in flight, the least advanced
    status; once all are final, `delivered` if all were, else the commonest other final."""
    statuses = {Status(name): number for name, number in counts.items() if number > 0}
    if not statuses:
        return Status.UNKNOWN
    if all(status in FINAL_STATUSES for status in statuses):
        failures = {s: n for s, n in statuses.items() if s is not Status.DELIVERED}
        if not failures:
            return Status.DELIVERED
        return max(sorted(failures), key=lambda s: failures[s])
    return min(statuses, key=lambda s: (STATUS_RANK[s], str(s)))


PROVIDER = ApiControl()
