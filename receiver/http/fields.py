"""The rules on values the API takes, each written once and shared by request bodies (as field
types), query parameters and the OpenAPI document (each rule carries its own schema, so that
what the document says is what the server checks): text without a NUL character (Postgres
cannot hold one), E.164 numbers of a length their country's plan allows, and RFC 3339 times with
a zone within the years a database and a JSON client agree on."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any

import phonenumbers
from phonenumbers import PhoneMetadata
from pydantic import AfterValidator, BeforeValidator, StringConstraints, WithJsonSchema

from normalizers.base import to_e164

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
KNOWN = "x-known"  # a mark the OpenAPI document replaces with a reference to a component

# Years written 1970 to 9998 (so that any zone still lands in years Python and Postgres both
# hold), a `T`, seconds with up to 6 decimals (no leap second: Python has none), and a zone (Z
# or an offset in hours and minutes).
MOMENT_PATTERN = (
    r"^(?:19[7-9]\d|[2-8]\d{3}|9[0-8]\d{2}|99[0-8]\d|999[0-8])-\d{2}-\d{2}"
    r"T\d{2}:\d{2}:[0-5]\d(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})$"
)
MOMENT_RULE = "an RFC 3339 time with a zone, years 1970 to 9998 (as 2026-12-03T09:30:00Z)"
MOMENT_SCHEMA: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "pattern": MOMENT_PATTERN,
    "description": MOMENT_RULE,
}
_MOMENT = re.compile(MOMENT_PATTERN, re.ASCII)  # \d as ECMA-262 reads it: 0-9 alone


def _e164_pattern() -> str:
    """`+`, a country calling code and a national number of a length its plan allows (by
    libphonenumber's metadata, the lengths of local numbers included), 15 digits at most (ITU
    E.164). Calling codes are a prefix code, so the alternatives never overlap."""
    codes_of: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, regions[0])
        if metadata is None:
            continue
        general = metadata.general_desc
        if general is None:
            continue
        lengths = {*general.possible_length, *(general.possible_length_local_only or ())}
        allowed = tuple(sorted(n for n in lengths if 0 < n <= 15 - len(str(code))))
        if allowed:
            codes_of[allowed].append(str(code))
    branches = []
    for allowed, codes in sorted(codes_of.items()):
        spans: list[list[int]] = []
        for n in allowed:
            if spans and spans[-1][1] == n - 1:
                spans[-1][1] = n
            else:
                spans.append([n, n])
        digits = "|".join(
            rf"\d{{{low}}}" if low == high else rf"\d{{{low},{high}}}" for low, high in spans
        )
        branches.append(f"(?:{'|'.join(sorted(codes))})(?:{digits})")
    return rf"^\+(?:{'|'.join(branches)})$"


E164_PATTERN = _e164_pattern()
E164_RULE = "an E.164 number: +, the country code and a national number of a possible length"
E164_SCHEMA: dict[str, Any] = {"type": "string", "pattern": E164_PATTERN, "description": E164_RULE}
_E164 = re.compile(E164_PATTERN, re.ASCII)

TEXT_PATTERN = r"^[^\u0000]*$"


def has_nul(text: str) -> bool:
    return "\x00" in text


def is_moment(text: str) -> bool:
    return _MOMENT.fullmatch(text) is not None


def is_e164(text: str) -> bool:
    return _E164.fullmatch(text) is not None


def typed_e164(text: str) -> str | None:
    """A number a person typed (spaces, 00, no +) as the API takes it, E.164; None when it is
    none."""
    e164 = to_e164(text.strip())
    return e164 if e164 is not None and is_e164(e164) else None


def parse_moment(text: str) -> datetime | None:
    """A time written as MOMENT_PATTERN says (and a real date: no 30 February); else None."""
    if not is_moment(text):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def no_nul(text: str) -> str:
    if has_nul(text):
        raise ValueError("must not contain a NUL character")
    return text


def plain_text(text: str) -> str:
    """Text the database can keep: no NUL, no lone surrogate (JSON can carry both)."""
    no_nul(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate is not)") from None
    return text


def _moment(value: Any) -> datetime:
    # A datetime made in Python (a stored request read again) is one already.
    if isinstance(value, datetime):
        return value
    parsed = parse_moment(value) if isinstance(value, str) else None
    if parsed is None:
        raise ValueError(f"must be {MOMENT_RULE}")
    return parsed


def _e164(value: str) -> str:
    if not is_e164(value):
        raise ValueError(f"must be {E164_RULE}")
    return value


Moment = Annotated[datetime, BeforeValidator(_moment), WithJsonSchema(MOMENT_SCHEMA)]
# The pattern is long (about 2 KB): the document names it once, as the component E164.
E164_REF: dict[str, Any] = {"$ref": "#/components/schemas/E164"}
E164 = Annotated[str, AfterValidator(_e164), WithJsonSchema({KNOWN: "E164"})]


def known(component: str) -> WithJsonSchema:
    """The schema of a value from a set the hub knows only when it runs (its providers' names,
    its brokers'): a reference to the document's component of that name, which the OpenAPI
    document fills from the registry and the settings the server checks against."""
    return WithJsonSchema({KNOWN: component})


# A provider of the registry (the server refuses any other with a 422 naming the field).
ProviderName = Annotated[str, AfterValidator(no_nul), known("ProviderName")]

# A sender id as providers carry it: up to 11 letters, digits and spaces, one letter at least.
SENDER_ID_PATTERN = r"^[A-Za-z0-9 ]*[A-Za-z][A-Za-z0-9 ]*$"
SENDER_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 11,
    "pattern": SENDER_ID_PATTERN,
    "description": "a sender id: 1 to 11 letters, digits and spaces, one letter at least",
}
_SENDER_ID = re.compile(SENDER_ID_PATTERN, re.ASCII)


def is_sender_id(text: str) -> bool:
    return len(text) <= 11 and _SENDER_ID.fullmatch(text) is not None


# Tenants' names (the storage checks them: a bad one is `invalid_tenant_name`).
TENANT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TenantName = Annotated[
    str,
    StringConstraints(pattern=TENANT_NAME_PATTERN),
    WithJsonSchema({"type": "string", "pattern": TENANT_NAME_PATTERN}),
]


def _number_or_sender(value: str) -> str:
    if not (is_e164(value) or is_sender_id(value)):
        raise ValueError(f"must be {E164_RULE}, or {SENDER_ID_SCHEMA['description']}")
    return value


NumberOrSender = Annotated[
    str,
    AfterValidator(_number_or_sender),
    WithJsonSchema({"anyOf": [{KNOWN: "E164"}, SENDER_ID_SCHEMA]}),
]
