"""Property tests over every normaliser: whatever arrives, a normaliser answers with events or a
ParseError, nothing else; and unknown extra fields change nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normalizers.base import CallbackRequest, ParseError
from normalizers.events import Event
from normalizers.registry import DEFAULT_REGISTRY
from tests.corpus import Case, comparable, load_cases

RECEIVED_AT = datetime(2024, 6, 3, 10, 6, tzinfo=UTC)
PROVIDERS = sorted(DEFAULT_REGISTRY)
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)

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


JSON_CASES = [
    case
    for case in load_cases()
    if "expected" in case.data and isinstance(case.data["request"].get("body"), dict)
]


@pytest.mark.parametrize("case", JSON_CASES, ids=[case.id for case in JSON_CASES])
@PROPERTY_SETTINGS
@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=10).map(lambda k: "x_" + k), json_values, max_size=4
    )
)
def test_unknown_extra_fields_give_the_same_events(case: Case, extra: dict[str, Any]) -> None:
    body = dict(case.data["request"]["body"], **extra)
    request = CallbackRequest(
        method=case.method,
        path=case.callback_request().path,
        query=case.query,
        headers=case.headers,
        body=json.dumps(body).encode(),
    )

    events = DEFAULT_REGISTRY[case.provider].parse_callback(request, case.received_at)

    assert [comparable(e) for e in events] == case.data["expected"]
