"""apicontrol: its callbacks (fixtures and status table) and its send adapter (the request built
from ours, each documented answer read back)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given

from normalizers.apicontrol import NAME, PROVIDER, STATUS_MAP
from normalizers.base import CallbackRequest, OptionsError
from normalizers.events import Status
from tests.corpus import Case
from tests.normalizers.support import (
    ACCOUNT,
    NOW,
    PROPERTY_SETTINGS,
    answer,
    assert_case_gives_its_expected_events,
    assert_extra_fields_change_nothing,
    assert_status_table_entry,
    extra_fields,
    for_each_case,
    json_post,
    send_request,
)

# --- callbacks ---------------------------------------------------------------------------------


def status_report(word: str) -> CallbackRequest:
    """A real-shaped apicontrol delivery report carrying `word` (test_every_provider uses it)."""
    return json_post(
        NAME, {"messageID": 1, "tstamp": 1717409122, "statuses": {"447700900001": word}}
    )


@pytest.mark.parametrize(("word", "expected"), sorted(STATUS_MAP.items()))
def test_status_table_entry(word: str, expected: Status) -> None:
    assert_status_table_entry(PROVIDER, status_report, word, expected)


@for_each_case(NAME)
def test_fixture_gives_its_expected_events(case: Case) -> None:
    assert_case_gives_its_expected_events(case)


@for_each_case(NAME, json_body=True)
@PROPERTY_SETTINGS
@given(extra=extra_fields)
def test_unknown_extra_fields_give_the_same_events(case: Case, extra: dict[str, Any]) -> None:
    assert_extra_fields_change_nothing(case, extra)


# --- send --------------------------------------------------------------------------------------


def test_builds_one_call_with_ref_callback_and_report_kind() -> None:
    req = send_request(2, options={"delivery_report": "per_recipient"})
    [call] = PROVIDER.build_send_request(req, ACCOUNT)

    assert call.path == "/sms/message"
    assert call.recipients == ("+447700900001", "+447700900002")
    assert call.json_body == {
        "to": ["+447700900001", "+447700900002"],
        "from": "+447700900999",
        "body": "Hello",
        "delivery_report": "per_recipient",
        "ref": "ref-1",
        "callbackURL": "http://127.0.0.1:8080/callbacks/x",
    }


def test_201_accepts_every_recipient_under_the_message_id() -> None:
    req = send_request(2)
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    outcome = PROVIDER.parse_send_response(
        call, req, answer(201, {"messageID": 42, "num_parts": 2, "num_recipients": 2}), NOW
    )

    assert not outcome.refused
    assert (outcome.segments, outcome.recipients) == (2, 2)
    assert [(e.recipient, e.status, e.provider_message_id) for e in outcome.events] == [
        ("+447700900001", Status.ACCEPTED, "42"),
        ("+447700900002", Status.ACCEPTED, "42"),
    ]


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"options": {"paused": True}}, Status.SCHEDULED),  # "not sent until released"
        ({"options": {"paused": False}}, Status.ACCEPTED),
    ],
)
def test_a_paused_message_is_scheduled(changes: dict[str, Any], status: Status) -> None:
    req = send_request(1, **changes)
    [call] = PROVIDER.build_send_request(req, ACCOUNT)

    outcome = PROVIDER.parse_send_response(call, req, answer(201, {"messageID": 7}), NOW)

    assert [e.status for e in outcome.events] == [status]
    assert outcome.recipients is None  # not said: not guessed


@pytest.mark.parametrize(
    ("status", "body", "code", "text"),
    [
        (
            200,
            {"num_parts": 4, "num_parts_max": 2, "info": "too many parts"},
            "num_parts_max",
            "too many parts",
        ),
        (
            400,
            {
                "status_code": 400,
                "status_msg": "Invalid input",
                "error": "bad number",
                "type": "validation",
                "arguement": "to",
            },
            "validation",
            "arguement: to",
        ),
        (401, {"status_code": 401, "status_msg": "Unauthorized"}, "401", "Unauthorized"),
        (
            403,
            {
                "status_code": 403,
                "status_msg": "Invalid input",
                "error": "sender not allowed",
                "type": "permission",
                "arguement": "from",
                "bad_value": "ACME",
            },
            "permission",
            "bad_value: ACME",
        ),
        (404, {"status_code": 404, "status_msg": "Not Found"}, "404", "Not Found"),
        (
            405,
            {"status_code": 405, "status_msg": "Method Not Allowed", "Allow": ["POST"]},
            "405",
            "Method Not Allowed",
        ),
    ],
)
def test_refusals(status: int, body: object, code: str, text: str) -> None:
    req = send_request()
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    outcome = PROVIDER.parse_send_response(call, req, answer(status, body), NOW)

    assert outcome.refused
    assert outcome.error_code == code
    assert text in (outcome.error_message or "")
    assert [e.status for e in outcome.events] == [Status.REJECTED]


def test_rejects_unknown_options() -> None:
    with pytest.raises(OptionsError) as raised:
        PROVIDER.validate_options({"delivery_report": "weekly", "x": 1}, send_request(), NOW)

    assert {d["field"] for d in raised.value.details} == {"options.delivery_report", "options.x"}
