"""telecom23 (23 Telecom): its callbacks (fixtures and status table), its HMAC callback signature,
and its send adapter (batches of 100, per-recipient results, documented error codes)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given

from normalizers.base import CallbackRequest, OptionsError
from normalizers.events import Status
from normalizers.telecom23 import NAME, PROVIDER, STATUS_MAP
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
    """A real-shaped telecom23 delivery webhook carrying `word` (test_every_provider uses it)."""
    return json_post(NAME, {"message_id": "api_1", "recipient": "+14155551234", "status": word})


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


# --- the callback signature --------------------------------------------------------------------

BODY = b'{"message_id":"api_1","status":"DELIVRD"}'
SECRET = "whsec-23"


def signed_request(secret: str, stamp: datetime, body: bytes = BODY) -> CallbackRequest:
    """A callback signed as documented: HMAC-SHA256(secret, "{timestamp}.{raw body}")."""
    timestamp = str(int(stamp.timestamp()))
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return CallbackRequest(
        method="POST",
        path="/callbacks/telecom23",
        headers={"X-Webhook-Timestamp": timestamp, "X-Webhook-Signature": f"sha256={digest}"},
        body=body,
    )


def test_accepts_its_documented_signature() -> None:
    assert PROVIDER.verify_callback(signed_request(SECRET, NOW), SECRET, NOW)


@pytest.mark.parametrize(
    "request_",
    [
        signed_request("another-secret", NOW),
        signed_request(SECRET, NOW - timedelta(minutes=6)),  # stale
        signed_request(SECRET, NOW + timedelta(minutes=6)),  # from the future
        CallbackRequest(method="POST", path="/callbacks/telecom23", body=BODY),  # unsigned
    ],
    ids=["wrong-secret", "stale", "future", "unsigned"],
)
def test_refuses_bad_signatures(request_: CallbackRequest) -> None:
    assert not PROVIDER.verify_callback(request_, SECRET, NOW)


def test_refuses_a_body_changed_after_signing() -> None:
    signed = signed_request(SECRET, NOW)
    tampered = CallbackRequest(
        method="POST",
        path=signed.path,
        headers=signed.headers,
        body=BODY.replace(b"DELIVRD", b"UNDELIV"),
    )

    assert not PROVIDER.verify_callback(tampered, SECRET, NOW)


# --- send --------------------------------------------------------------------------------------


def test_splits_into_batches_of_100() -> None:
    calls = PROVIDER.build_send_request(send_request(250), ACCOUNT)

    assert [len(call.recipients) for call in calls] == [100, 100, 50]
    assert calls[0].headers == {"X-API-Key": "k3y"}
    assert calls[2].json_body == {
        "to": list(calls[2].recipients),
        "message": "Hello",
        "sender_id": "+447700900999",
    }


def test_reads_per_recipient_results() -> None:
    req = send_request(3)
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    body = {
        "status": True,
        "results": [
            {"dnis": "+447700900001", "message_id": "api_1", "segments": 1, "status": "accepted"},
            {"dnis": "+447700900002", "segments": 1, "status": "blocked_country"},
            {"dnis": "+447700900003", "segments": 1, "status": "queue_error"},
        ],
        "summary": {"total_segments": 3},
    }
    outcome = PROVIDER.parse_send_response(call, req, answer(200, body), NOW)

    assert [(e.status, e.failure_kind, e.provider_message_id) for e in outcome.events] == [
        (Status.ACCEPTED, None, "api_1"),
        (Status.REJECTED, "permanent", None),
        (Status.FAILED, "temporary", None),
    ]
    assert outcome.segments == 1  # per message, not the summary's total for three


@pytest.mark.parametrize(
    ("status", "code", "expected", "retry"),
    [
        (400, "INVALID_TO", Status.REJECTED, False),
        (400, "INVALID_MESSAGE", Status.REJECTED, False),
        (400, "INVALID_SENDER", Status.REJECTED, False),
        (400, "INVALID_BODY", Status.REJECTED, False),
        (400, "TOO_MANY_RECIPIENTS", Status.REJECTED, False),
        (402, "INSUFFICIENT_BALANCE", Status.FAILED, False),
        (403, "NO_SMS_ACCESS", Status.FAILED, False),
        (403, "CONFIG_ERROR", Status.FAILED, False),
        (403, "WORKSPACE_NOT_AVAILABLE", Status.FAILED, False),
        (500, "DB_ERROR", Status.FAILED, True),
    ],
)
def test_errors(status: int, code: str, expected: Status, retry: bool) -> None:
    req = send_request()
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    body = {"status": False, "error_code": code, "description": "explained"}
    outcome = PROVIDER.parse_send_response(call, req, answer(status, body), NOW)

    assert outcome.refused
    assert outcome.retry is retry
    assert outcome.error_code == code
    assert [e.status for e in outcome.events] == [expected]


def test_a_200_without_results_is_read_from_its_messages_array() -> None:
    req = send_request(2)
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    body = {
        "status": True,
        "messages": [{"dnis": "+447700900001", "message_id": "api_9", "segment_num": 2}],
    }
    outcome = PROVIDER.parse_send_response(call, req, answer(200, body), NOW)

    assert not outcome.refused
    assert [(e.status, e.provider_message_id, e.segments) for e in outcome.events] == [
        (Status.ACCEPTED, "api_9", 2),
        (Status.UNKNOWN, None, None),  # not among the accepted: the answer does not say
    ]


@pytest.mark.parametrize("body", [{"status": True}, {"results": "soon"}, None, ["x"]])
def test_a_200_that_cannot_be_read_leaves_every_recipient_unknown_never_rejected(
    body: object,
) -> None:
    req = send_request(2)
    [call] = PROVIDER.build_send_request(req, ACCOUNT)

    outcome = PROVIDER.parse_send_response(call, req, answer(200, body), NOW)

    assert [e.status for e in outcome.events] == [Status.UNKNOWN, Status.UNKNOWN]
    assert outcome.error_code == "outcome_unknown"


def test_a_402_keeps_the_balance_and_the_cost() -> None:
    req = send_request()
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    body = {
        "status": False,
        "error_code": "INSUFFICIENT_BALANCE",
        "description": "Balance too low",
        "balance": 0.5,
        "estimated_cost": 1.25,
        "currency": "GBP",
        "total_recipients": 1,
        "billable_recipients": 1,
        "segments": 1,
    }
    outcome = PROVIDER.parse_send_response(call, req, answer(402, body), NOW)

    assert outcome.details == {
        "balance": 0.5,
        "estimated_cost": 1.25,
        "currency": "GBP",
        "total_recipients": 1,
        "billable_recipients": 1,
        "segments": 1,
    }
    [event] = outcome.events
    assert event.error_message == "Balance too low (balance 0.5 GBP, estimated cost 1.25 GBP)"
    assert (event.status, event.failure_kind) == (Status.FAILED, "temporary")


@pytest.mark.parametrize(
    ("sender", "valid"),
    [
        ("MyApp", True),
        ("ABCDEFGHIJK", True),  # 11
        ("+447700900999", True),
        ("447700900999", True),
        ("ABCDEFGHIJKL", False),  # 12
        ("My App", False),  # a space is not alphanumeric
        ("Shop-1", False),
        ("Café", False),
    ],
)
def test_the_sender_id_is_11_alphanumerics_or_a_number(sender: str, valid: bool) -> None:
    request = send_request(sender=sender)

    if valid:
        PROVIDER.validate_options({}, request, NOW)
    else:
        with pytest.raises(OptionsError) as refused:
            PROVIDER.validate_options({}, request, NOW)
        assert [d["field"] for d in refused.value.details] == ["from"]
