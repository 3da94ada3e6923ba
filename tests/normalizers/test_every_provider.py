"""The contract every registered provider keeps, checked over the whole registry: each has
fixtures, a status table and a status report to test it with; words no table knows become
`unknown` with the word kept; status words are read whatever their case; without a secret no
signature is required; and whatever arrives (property tests), a normaliser answers with events or
a ParseError, nothing else."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normalizers.base import CallbackRequest, ParseError
from normalizers.events import Event, Status
from normalizers.registry import DEFAULT_REGISTRY
from tests.corpus import load_cases
from tests.normalizers.support import (
    NOW,
    PROPERTY_SETTINGS,
    RECEIVED_AT,
    StatusReport,
    json_values,
)

PROVIDERS = sorted(DEFAULT_REGISTRY)

# Each provider's status table (its normaliser's), and its status report, from its own test file
# (which tests its table entry by entry): found by the registry's name, so that a new provider is
# held to this contract as soon as it is registered.
TABLES: Mapping[str, Mapping[str, Status]] = {
    name: importlib.import_module(f"normalizers.{name}").STATUS_MAP for name in DEFAULT_REGISTRY
}
STATUS_REPORTS: Mapping[str, StatusReport] = {
    name: importlib.import_module(f"tests.normalizers.test_{name}").status_report
    for name in DEFAULT_REGISTRY
}


def test_every_provider_has_fixtures() -> None:
    assert {case.provider for case in load_cases()} == set(DEFAULT_REGISTRY)


def test_every_provider_has_a_table_and_a_status_report() -> None:
    assert set(TABLES) == set(DEFAULT_REGISTRY) == set(STATUS_REPORTS)


# --- status words ------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", sorted(STATUS_REPORTS))
@pytest.mark.parametrize("word", ["quantum_limbo", "Delivered?", "  "])
def test_an_unmapped_word_is_unknown_and_kept_verbatim(provider: str, word: str) -> None:
    events = DEFAULT_REGISTRY[provider].parse_callback(STATUS_REPORTS[provider](word), RECEIVED_AT)

    assert [(e.status, e.final) for e in events] == [(Status.UNKNOWN, False)]
    assert events[0].provider_status == word


@pytest.mark.parametrize("provider", sorted(STATUS_REPORTS))
def test_status_words_are_read_whatever_their_case(provider: str) -> None:
    report = STATUS_REPORTS[provider]
    word = next(w for w, s in sorted(TABLES[provider].items()) if s is Status.DELIVERED)

    [upper] = DEFAULT_REGISTRY[provider].parse_callback(report(word.upper()), RECEIVED_AT)
    [lower] = DEFAULT_REGISTRY[provider].parse_callback(report(word.lower()), RECEIVED_AT)

    assert upper.status is lower.status is Status.DELIVERED


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_without_a_secret_signing_is_not_required(provider: str) -> None:
    unsigned = CallbackRequest(
        method="POST",
        path=f"/callbacks/{provider}",
        body=b'{"message_id":"api_1","status":"DELIVRD"}',
    )

    assert DEFAULT_REGISTRY[provider].verify_callback(unsigned, None, NOW)


# --- whatever arrives (property tests) ---------------------------------------------------------

# Keys the normalisers look for, so that random payloads reach deep into the parsers.
KNOWN_KEYS = st.sampled_from(
    [
        "message_sid",
        "status",
        "direction",
        "to",
        "from",
        "from_did",
        "date_status_changed",
        "message_segments",
        "price",
        "group_recipients",
        "messageID",
        "statuses",
        "tstamp",
        "callback_type",
        "body",
        "ref",
        "message_id",
        "recipient",
        "status_code",
        "num_parts",
        "cost",
        "timestamp",
        "message",
        "Event",
        "Message.Sid",
        "Message.To",
        "Message.Status",
        "Message.Delivered",
        "type",
        "id",
        "sms",
        "delivery_status",
        "data",
        "mms",
    ]
)
payloads = st.dictionaries(KNOWN_KEYS | st.text(max_size=8), json_values, max_size=8)


def only_events_or_parse_error(provider: str, request: CallbackRequest) -> list[Event]:
    try:
        events = DEFAULT_REGISTRY[provider].parse_callback(request, RECEIVED_AT)
    except ParseError:
        return []
    for event in events:
        event.to_json()  # every event it gives can be serialised
    return events


@pytest.mark.parametrize("provider", PROVIDERS)
@PROPERTY_SETTINGS
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain", ""]
    ),
)
def test_random_bytes_never_escape_as_another_exception(
    provider: str, body: bytes, content_type: str
) -> None:
    request = CallbackRequest(
        method="POST",
        path=f"/callbacks/{provider}",
        headers={"Content-Type": content_type},
        body=body,
    )
    only_events_or_parse_error(provider, request)


@pytest.mark.parametrize("provider", PROVIDERS)
@PROPERTY_SETTINGS
@given(payload=payloads | st.lists(payloads, max_size=3) | json_values)
def test_random_json_never_escapes_as_another_exception(provider: str, payload: Any) -> None:
    body = json.dumps(payload).encode()
    request = CallbackRequest(
        method="POST",
        path=f"/callbacks/{provider}",
        headers={"Content-Type": "application/json"},
        body=body,
    )
    only_events_or_parse_error(provider, request)


@pytest.mark.parametrize("provider", PROVIDERS)
@PROPERTY_SETTINGS
@given(
    form=st.dictionaries(KNOWN_KEYS | st.text(max_size=8), st.text(max_size=20), max_size=8),
    as_query=st.booleans(),
)
def test_random_form_data_never_escapes_as_another_exception(
    provider: str, form: dict[str, str], as_query: bool
) -> None:
    encoded = urlencode(form)
    request = CallbackRequest(
        method="GET" if as_query else "POST",
        path=f"/callbacks/{provider}",
        query=encoded if as_query else "",
        headers={} if as_query else {"Content-Type": "application/x-www-form-urlencoded"},
        body=b"" if as_query else encoded.encode(),
    )
    only_events_or_parse_error(provider, request)
