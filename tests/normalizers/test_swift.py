"""swift (Swift SMS Gateway): its callbacks (fixtures and status table), its switch-secret check,
and its send adapter (one call without `+`, the 200/207/422 answers)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given

from normalizers.base import CallbackRequest
from normalizers.events import Status
from normalizers.swift import NAME, PROVIDER, STATUS_MAP
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
    """A real-shaped swift SMS DLR carrying `word` (test_every_provider uses it)."""
    return json_post(
        NAME,
        {
            "type": "sms_dlr",
            "id": "R1",
            "sms": {"id": "S1"},
            "to": "12003004001",
            "delivery_status": word,
        },
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


# --- the switch secret -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        ("Bearer switch-secret", True),
        ("Basic " + base64.b64encode(b"identity:switch-secret").decode(), True),
        ("Bearer wrong", False),
        ("Basic " + base64.b64encode(b"identity:wrong").decode(), False),
        ("Basic !!!not-base64", False),
        ("", False),
    ],
)
def test_checks_the_switch_secret(authorization: str, accepted: bool) -> None:
    request = CallbackRequest(
        method="POST", path="/callbacks/swift", headers={"Authorization": authorization}, body=b"{}"
    )

    assert PROVIDER.verify_callback(request, "switch-secret", NOW) is accepted


# --- send --------------------------------------------------------------------------------------


def result(to: str, code: str = "OK", parts: int = 1) -> dict[str, Any]:
    """One recipient's entry in a send answer's `results`."""
    return {
        "direction": "OUTBOUND",
        "error_code": code,
        "from": "447700900999",
        "id": f"ID{to[-2:]}",
        "origin_id": "ref-1",
        "parts": [{"id": f"P{to[-2:]}{n}"} for n in range(parts)],
        "status": "NEW",
        "to": to,
        "type": "SMS",
    }


def test_builds_one_call_without_plus() -> None:
    [call] = PROVIDER.build_send_request(send_request(2), ACCOUNT)

    assert call.json_body == {
        "body": "Hello",
        "to": ["447700900001", "447700900002"],
        "request_dlr": True,
        "from": "447700900999",
        "id": "ref-1",
    }
    assert call.headers == {"Authorization": "Bearer k3y"}


def test_200_207_422() -> None:
    req = send_request(2)
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    ok = PROVIDER.parse_send_response(
        call,
        req,
        answer(200, {"results": [result("447700900001", parts=2), result("447700900002")]}),
        NOW,
    )
    partial = PROVIDER.parse_send_response(
        call,
        req,
        answer(
            207, {"results": [result("447700900001"), result("447700900002", "recipient_error")]}
        ),
        NOW,
    )
    failed = PROVIDER.parse_send_response(
        call,
        req,
        answer(
            422,
            {
                "results": [
                    result("447700900001", "ACCOUNT_SMS_DISABLED"),
                    result("447700900002", "temporary_error"),
                ]
            },
        ),
        NOW,
    )

    assert [e.status for e in ok.events] == [Status.ACCEPTED, Status.ACCEPTED]
    assert ok.parts == {"+447700900001": ["P010", "P011"], "+447700900002": ["P020"]}
    assert not ok.refused
    assert [e.status for e in partial.events] == [Status.ACCEPTED, Status.REJECTED]
    assert not partial.refused
    assert [(e.status, e.failure_kind) for e in failed.events] == [
        (Status.REJECTED, "permanent"),
        (Status.FAILED, "temporary"),
    ]
    assert failed.refused
    assert failed.error_code == "ACCOUNT_SMS_DISABLED"


def test_has_no_send_time_so_the_hub_holds_the_message() -> None:
    assert PROVIDER.schedules_sends is False
    [call] = PROVIDER.build_send_request(send_request(send_at=NOW), ACCOUNT)

    assert call.json_body is not None
    assert "send_at" not in call.json_body
