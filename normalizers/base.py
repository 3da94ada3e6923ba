"""The provider contract: what every provider module offers, and the request/response shapes it
works on. Everything here is pure data; the receiver does the I/O around it."""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol
from urllib.parse import parse_qsl

import phonenumbers
from pydantic import BaseModel, ConfigDict, ValidationError

from normalizers.events import Event, EventType, FailureKind, Price, Status, event_id


class NormalizerError(Exception):
    """Base of the errors a normaliser raises."""


class ParseError(NormalizerError):
    """The payload cannot be read as any format the provider is known to send."""


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """One HTTP request that reached /callbacks/{provider}, as bytes and strings only."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))

    def fields(self) -> Any:
        """The payload as data: a JSON body, else a form body, else the query string.

        Providers are lax about Content-Type, so a body that looks like JSON is read as JSON
        whatever the header says."""
        try:
            text = self.body.decode("utf-8-sig") if self.body else ""
        except UnicodeDecodeError as error:
            raise ParseError(f"body is not UTF-8 text: {error.reason} at {error.start}") from None
        stripped = text.strip()
        if stripped[:1] in ("{", "["):
            try:
                return json.loads(stripped)
            except json.JSONDecodeError as error:
                raise ParseError(f"body is not valid JSON: {error.msg} at {error.pos}") from None
            except RecursionError:
                raise ParseError("body is JSON nested too deeply") from None
        if stripped and (
            self.content_type == "application/x-www-form-urlencoded" or "=" in stripped
        ):
            return dict(parse_qsl(stripped, keep_blank_values=True))
        if stripped:
            raise ParseError(f"body is neither JSON nor a form ({self.content_type or 'no type'})")
        return self.query_params()


@dataclass(frozen=True, slots=True)
class ProviderAccount:
    """Where and as whom to call a provider's API (from configuration; never logged)."""

    base_url: str
    api_key: str | None = None  # Bearer token, X-API-Key, or the Basic password
    account_sid: str | None = None  # the Basic user (Fone Dynamics' AccountSid)
    property_sid: str | None = None  # Fone Dynamics' PropertySid


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Our unified send request, options already validated by the provider's Options model."""

    to: Sequence[str]
    sender: str | None
    body: str
    message_id: str = ""  # ours: part of the send-answer events' ids, never sent to providers
    client_ref: str | None = None
    callback_url: str | None = None
    send_at: datetime | None = None
    expires_at: datetime | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One call to the provider's API, and the recipients it covers."""

    method: str
    path: str
    recipients: tuple[str, ...]
    json_body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """`HTTP 503: <the start of the body>`, for an error message."""
        return f"HTTP {self.status}: {self.body[:300].decode('utf-8', 'replace')}".rstrip(": ")

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return None


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What the provider's answer to one call says.

    events: one per recipient of the call (accepted, queued, rejected...), each with the
      provider's id for later correlation;
    refused: the provider refused the request as a whole (our answer is then 502);
    error_code/error_message: the provider's, verbatim, when it refused;
    retry: the failure is transient AND the provider's API makes a retry safe;
    parts: the provider's part ids per recipient, when it gives them (for multipart reports);
    segments: the number of segments the provider says it will bill, when it says;
    recipients: the number of recipients the provider says it took, when it says;
    details: what else a refusal says that the caller needs (23 Telecom's balance), verbatim;
    about_account: the refusal is about our account with the provider (its credit), not the
      message: another provider may take it."""

    events: Sequence[Event]
    refused: bool = False
    error_code: str | None = None
    error_message: str | None = None
    retry: bool = False
    parts: Mapping[str, Sequence[str]] = field(default_factory=dict)
    segments: int | None = None
    recipients: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    about_account: bool = False


class OptionsError(NormalizerError):
    """The provider-specific `options` of a send request are not valid for that provider."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("invalid options")
        self.details = details


class Provider(Protocol):
    """One provider's pure translation layer (one module per provider)."""

    name: str
    # Whether verify_callback checks a signing secret: where it does not, a secret configured
    # for the provider authenticates nothing.
    signs_callbacks: bool
    # Whether the provider's send API takes a send time (and holds the message until then):
    # where it does not, the hub keeps a message with a future send_at and sends it then.
    schedules_sends: bool

    def validate_options(
        self, options: Mapping[str, Any], request: SendRequest, now: datetime
    ) -> Mapping[str, Any]:
        """The options as the adapter will use them; raises OptionsError naming each bad
        field."""
        ...

    def build_send_request(
        self, request: SendRequest, account: ProviderAccount
    ) -> Sequence[HttpRequest]: ...

    def parse_send_response(
        self, call: HttpRequest, request: SendRequest, response: HttpResponse, received_at: datetime
    ) -> SendOutcome: ...

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]: ...

    def verify_callback(
        self, request: CallbackRequest, secret: str | None, now: datetime
    ) -> bool: ...

    def replay_key(self, request: CallbackRequest) -> str | None:
        """What tells one signed delivery from another (a timestamp and its signature), for a
        provider whose signature carries a time: the same key again within the signature's
        tolerance is a replay. None where the provider signs nothing of the kind."""
        ...


_PHONE_LIKE = re.compile(r"^\+?[\d\s().-]{6,}$", re.ASCII)


def to_e164(value: object, region: str | None = None) -> str | None:
    """A phone number as E.164 with `+`: given with `+`, with an international `00`, or as the
    digits of an international number without either (as providers send them). A national
    number (a leading 0: which country, the payload does not say) is read in `region` (the
    provider's DEFAULT_REGION), and kept as given without one. An alphanumeric sender id is
    returned as given."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    if not _PHONE_LIKE.match(text):
        return text
    digits = re.sub(r"\D", "", text, flags=re.ASCII)
    # An international number only loses its punctuation: no metadata is needed for that, and
    # the library's parse costs ~15 us a number on the callback path (~0.6 us this way).
    if text.startswith("+"):
        return "+" + digits
    if digits.startswith("00"):
        return "+" + digits[2:]
    if digits.startswith("0"):
        return (_formatted(digits, region) if region else None) or digits
    return "+" + digits


def _formatted(number: str, region: str) -> str | None:
    """A national number as E.164 by the region's numbering plan, if it can be read so."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def is_national(number: str | None) -> bool:
    """A number as to_e164 leaves it without a region: digits with a leading 0."""
    return number is not None and number[:1] == "0" and number.isascii() and number.isdigit()


def in_region(events: Sequence[Event], region: str | None) -> list[Event]:
    """The events with their national numbers read in the provider's region."""
    if region is None:
        return list(events)
    return [
        dataclasses.replace(
            event,
            recipient=to_e164(event.recipient, region)
            if is_national(event.recipient)
            else event.recipient,
            sender=to_e164(event.sender, region) if is_national(event.sender) else event.sender,
        )
        if is_national(event.recipient) or is_national(event.sender)
        else event
        for event in events
    ]


# A send asks these of each recipient several times (its body's check, its route, its
# destination rules): libphonenumber's validity test costs about half a millisecond each.
@functools.lru_cache(maxsize=8192)
def number_facts(e164: str) -> tuple[bool, bool, str | None]:
    """Whether an E.164 number is possible (its length fits its country), valid (allocated, by
    the numbering plans' metadata), and its country (ISO 3166 code)."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return False, False, None
    # A number of no allocated range (Ofcom's drama numbers, +44 7700 900xxx) still has the
    # country of its calling code.
    country = phonenumbers.region_code_for_number(parsed)
    if country is None and parsed.country_code is not None:
        country = phonenumbers.region_code_for_country_code(parsed.country_code)
    return (
        phonenumbers.is_possible_number(parsed),
        phonenumbers.is_valid_number(parsed),
        country if country not in (None, "ZZ", "001") else None,
    )


def parse_timestamp(value: object) -> datetime | None:
    """ISO 8601 (with `Z`, an offset or none: naive means UTC), Unix seconds, or Unix
    milliseconds; None when absent or unreadable, so that a bad timestamp falls back to the
    receipt time instead of failing."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and _is_number(value)):
        seconds = float(value)
        if abs(seconds) >= _MILLISECONDS_FROM:
            seconds /= 1000
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: an offset pushing year 1 or 9999 out
        return None


# Unix seconds reach 1e11 only in the year 5138: a number that large is milliseconds.
_MILLISECONDS_FROM = 1e11


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def first_present(data: Mapping[str, Any], *names: str) -> Any:
    """The first of several field names (current and legacy spellings) that holds a value."""
    for name in names:
        value = data.get(name)
        if value is not None and value != "":
            return value
    return None


def int_or_none(value: object) -> int | None:
    """A count (segments, parts) that may come as a number or digits in a string; anything else,
    negative or beyond what storage holds, is None rather than a reason to refuse the report."""
    number: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    return number if number is not None and 0 <= number <= _MAX_COUNT else None


_MAX_COUNT = 2**31 - 1


def str_or_none(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def decimal_string(value: object, places: int = 4) -> str | None:
    """A money amount as a decimal string (`0.0085`), never through a float's rounding."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    # A huge exponent ("1e200000000") would print as a 200 MB string: no real price is that.
    if not amount.is_finite() or abs(amount.adjusted()) > 12:
        return None
    return f"{amount:.{places}f}"


def lower_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """Field names compared without regard to case, as providers are not consistent."""
    return {str(key).lower(): value for key, value in data.items()}


def timing(stamp: object, received_at: datetime) -> dict[str, Any]:
    """An event's occurred_at, received_at and occurred_at_source: the provider's time when the
    payload has a readable one, else the receipt time."""
    occurred_at = parse_timestamp(stamp)
    return {
        "occurred_at": occurred_at or received_at,
        "received_at": received_at,
        "occurred_at_source": "provider" if occurred_at else "received",
    }


def report_objects(payload: object, what: str) -> list[Mapping[str, Any]]:
    """One report object, or a non-empty array of them, as a list; anything else is refused."""
    items: list[object] = payload if isinstance(payload, list) else [payload]
    if not items:
        raise ParseError(f"empty list: no {what}")
    reports: list[Mapping[str, Any]] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ParseError(f"expected {what}, got {type(item).__name__}")
        reports.append(item)
    return reports


def send_answer_event(
    provider: str,
    request: SendRequest,
    *,
    recipient: str,
    status: Status,
    provider_status: str,
    received_at: datetime,
    provider_message_id: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    failure_kind: FailureKind | None = None,
    segments: int | None = None,
    price: Price | None = None,
) -> Event:
    """The event a send answer gives for one recipient. Its id includes our message's id, so
    two messages to one number never share an event."""
    return Event(
        id=event_id(
            provider,
            "send",
            request.message_id,
            recipient,
            provider_status,
            provider_message_id,
            error_code,
        ),
        type=EventType.STATUS,
        provider=provider,
        status=status,
        provider_status=provider_status,
        occurred_at=received_at,
        received_at=received_at,
        occurred_at_source="received",
        provider_message_id=provider_message_id,
        recipient=to_e164(recipient),
        sender=to_e164(request.sender),
        error_code=error_code,
        error_message=error_message,
        failure_kind=failure_kind,
        client_ref=request.client_ref,
        segments=segments,
        price=price,
    )


def missing_result(
    provider: str, request: SendRequest, recipient: str, received_at: datetime
) -> Event:
    """A recipient the provider's answer says nothing about: `unknown`, not a refusal."""
    return send_answer_event(
        provider,
        request,
        recipient=recipient,
        status=Status.UNKNOWN,
        provider_status="missing",
        received_at=received_at,
        error_message="the answer has no result for this recipient",
    )


def refused(
    provider: str,
    call: HttpRequest,
    request: SendRequest,
    received_at: datetime,
    *,
    status: Status,
    error_code: str,
    error_message: str | None,
    failure_kind: FailureKind | None,
    retry: bool = False,
) -> SendOutcome:
    """The provider refused the whole call: every recipient of it gets the same failure."""
    events = [
        send_answer_event(
            provider,
            request,
            recipient=recipient,
            status=status,
            provider_status=error_code,
            received_at=received_at,
            error_code=error_code,
            error_message=error_message,
            failure_kind=failure_kind,
        )
        for recipient in call.recipients
    ]
    return SendOutcome(
        events=events,
        refused=True,
        error_code=error_code,
        error_message=error_message,
        retry=retry,
    )


def unanswered(
    provider: str, call: HttpRequest, request: SendRequest, reason: str, received_at: datetime
) -> SendOutcome:
    """No usable answer (a timeout, a lost connection, a 5xx or an answer that cannot be read):
    the provider may or may not have sent the message. The recipients are `unknown` (not final:
    a later report still counts) with error_code `outcome_unknown`, and nothing is retried
    behind the client's back: sending again could deliver it twice."""
    return refused(
        provider,
        call,
        request,
        received_at,
        status=Status.UNKNOWN,
        error_code=OUTCOME_UNKNOWN,
        error_message=reason,
        failure_kind=None,
    )


def not_sent(
    provider: str, call: HttpRequest, request: SendRequest, reason: str, received_at: datetime
) -> SendOutcome:
    """The provider could not be reached at all (connection refused, name not resolved):
    nothing was sent, so the recipients are `failed` and worth sending again (temporary)."""
    return refused(
        provider,
        call,
        request,
        received_at,
        status=Status.FAILED,
        error_code="not_sent",
        error_message=reason,
        failure_kind="temporary",
    )


def rate_limited(
    provider: str, call: HttpRequest, request: SendRequest, reason: str, received_at: datetime
) -> SendOutcome:
    """The provider kept answering 429 (too many requests) beyond the retry budget: nothing was
    sent, so the recipients are `failed`, temporary (never a permanent refusal: the same
    message later, or slower, goes through)."""
    return refused(
        provider,
        call,
        request,
        received_at,
        status=Status.FAILED,
        error_code=RATE_LIMITED,
        error_message=reason,
        failure_kind="temporary",
    )


OUTCOME_UNKNOWN = "outcome_unknown"
RATE_LIMITED = "rate_limited"


def validated_options(model: type[BaseModel], options: Mapping[str, Any]) -> dict[str, Any]:
    """A provider's options checked by its pydantic model (unknown names refused), as a dict of
    the values given; OptionsError lists each bad field and why."""
    try:
        return model.model_validate(dict(options)).model_dump(exclude_unset=True, mode="json")
    except ValidationError as error:
        raise OptionsError(
            [
                {"field": ".".join(["options", *map(str, e["loc"])]), "error": e["msg"]}
                for e in error.errors()
            ]
        ) from None


class StrictOptions(BaseModel):
    """Base of every provider's Options: a name the provider does not take is an error."""

    model_config = ConfigDict(extra="forbid")
