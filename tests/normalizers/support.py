"""What the per-provider test files share: the checks each runs over its own fixtures and status
table, the request builders, and the send side's common request, account and answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from normalizers.base import (
    CallbackRequest,
    HttpResponse,
    ParseError,
    Provider,
    ProviderAccount,
    SendRequest,
)
from normalizers.events import EventType, Status
from normalizers.registry import DEFAULT_REGISTRY
from tests.corpus import Case, comparable, load_cases

RECEIVED_AT = datetime(2024, 6, 3, 10, 6, tzinfo=UTC)

# --- callbacks ---------------------------------------------------------------------------------

# A provider's real-shaped status report carrying a given status word.
StatusReport = Callable[[str], CallbackRequest]


def json_post(provider: str, body: object) -> CallbackRequest:
    return CallbackRequest(
        method="POST",
        path=f"/callbacks/{provider}",
        headers={"Content-Type": "application/json"},
        body=json.dumps(body).encode(),
    )


def assert_status_table_entry(
    provider: Provider, report: StatusReport, word: str, expected: Status
) -> None:
    """One entry of the provider's status table, sent through its real callback format."""
    [event] = provider.parse_callback(report(word), RECEIVED_AT)

    if expected is Status.RECEIVED:
        assert event.type is EventType.INBOUND
    else:
        assert event.type is EventType.STATUS
        assert event.status is expected
        assert event.provider_status == word


# --- the fixture corpus ------------------------------------------------------------------------


def for_each_case(provider: str, *, json_body: bool = False) -> pytest.MarkDecorator:
    """Parametrise `case` over the provider's fixtures; with json_body, only those that give
    events from a JSON object body (the ones a field can be added to)."""
    cases = [
        case
        for case in load_cases(provider)
        if not json_body
        or ("expected" in case.data and isinstance(case.data["request"].get("body"), dict))
    ]
    return pytest.mark.parametrize("case", cases, ids=[case.name for case in cases])


def assert_case_gives_its_expected_events(case: Case) -> None:
    """The fixture gives exactly the events its file states, or the ParseError it states."""
    provider = DEFAULT_REGISTRY[case.provider]
    request = case.callback_request()

    if "error" in case.data:
        with pytest.raises(ParseError, match=case.data["error"]):
            provider.parse_callback(request, case.received_at)
        return
    events = provider.parse_callback(request, case.received_at)

    assert [comparable(event) for event in events] == case.data["expected"]
    assert case.data["expected"], "a case states at least one event, or an error"


def assert_extra_fields_change_nothing(case: Case, extra: dict[str, Any]) -> None:
    """The fixture's JSON body with `extra` fields added gives the events the fixture states."""
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


# --- property tests ----------------------------------------------------------------------------

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

# Field names no provider uses, with any JSON value.
extra_fields = st.dictionaries(
    st.text(min_size=1, max_size=10).map(lambda k: "x_" + k), json_values, max_size=4
)

# --- the send side -----------------------------------------------------------------------------

NOW = datetime(2024, 6, 14, 12, 0, tzinfo=UTC)
ACCOUNT = ProviderAccount(
    base_url="http://127.0.0.1:1", api_key="k3y", account_sid="AC1", property_sid="PS1"
)


def send_request(n: int = 1, **changes: Any) -> SendRequest:
    """Our send request to n recipients (+447700900001 on), with `changes` applied."""
    fields: dict[str, Any] = {
        "to": [f"+4477009000{i:02d}" for i in range(1, n + 1)],
        "sender": "+447700900999",
        "body": "Hello",
        "message_id": "msg-1",
        "client_ref": "ref-1",
        "callback_url": "http://127.0.0.1:8080/callbacks/x",
    }
    return SendRequest(**(fields | changes))


def answer(status: int, body: object) -> HttpResponse:
    """The provider's HTTP answer, with `body` as JSON."""
    return HttpResponse(status=status, body=json.dumps(body).encode())
