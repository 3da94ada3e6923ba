"""properties (Fone Dynamics): its webhooks (fixtures and status table) and its send adapter (one
call per recipient, receipt webhook, schedule rules, answers)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given

from normalizers.base import CallbackRequest, OptionsError
from normalizers.events import Status
from normalizers.properties import NAME, PROVIDER, STATUS_MAP
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
    send_request,
)

# --- callbacks ---------------------------------------------------------------------------------


def status_report(word: str) -> CallbackRequest:
    """A real-shaped properties delivery receipt (a GET) carrying `word` (test_every_provider
    uses it)."""
    return CallbackRequest(
        method="GET",
        path=f"/callbacks/{NAME}",
        query=urlencode(
            {
                "Event": "Message.DeliveryReceiptReceived",
                "Message.Sid": "M1",
                "Message.To": "+61488023555",
                "Message.Status": word,
            }
        ),
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


def test_one_call_per_recipient_with_receipt_webhook_and_basic_auth() -> None:
    req = send_request(
        2, send_at=NOW + timedelta(days=1), options={"delivery_receipt_method": "GET"}
    )
    calls = PROVIDER.build_send_request(req, ACCOUNT)

    assert [c.path for c in calls] == ["/v2/Properties/PS1/Messages"] * 2
    assert calls[0].headers["Authorization"] == "Basic " + base64.b64encode(b"AC1:k3y").decode()
    assert calls[1].json_body == {
        "From": "+447700900999",
        "To": "+447700900002",
        "Text": "Hello",
        "ExternalId": "ref-1",
        "DeliveryReceipt": True,
        "DeliveryReceiptWebhookUri": "http://127.0.0.1:8080/callbacks/x",
        "DeliveryReceiptWebhookMethod": "GET",
        "Schedule": int((NOW + timedelta(days=1)).timestamp()),
    }


def test_leased_sender_asks_for_replies_too() -> None:
    req = send_request(sender=None, options={"forward_to_email": "ops@example.com"})
    [call] = PROVIDER.build_send_request(req, ACCOUNT)

    assert call.json_body is not None
    assert call.json_body["From"] == ""
    assert call.json_body["WebhookUri"] == "http://127.0.0.1:8080/callbacks/x"
    assert call.json_body["ForwardToEmail"] == "ops@example.com"


@pytest.mark.parametrize(
    ("send_at", "expires_at", "field"),
    [
        (NOW + timedelta(days=15), None, "send_at"),
        (NOW - timedelta(hours=2), None, "send_at"),
    ],
)
def test_schedule_rules(send_at: datetime | None, expires_at: datetime | None, field: str) -> None:
    with pytest.raises(OptionsError) as raised:
        PROVIDER.validate_options({}, send_request(send_at=send_at, expires_at=expires_at), NOW)

    assert [d["field"] for d in raised.value.details] == [field]


def test_a_schedule_less_than_an_hour_late_is_fine() -> None:
    PROVIDER.validate_options({}, send_request(send_at=NOW - timedelta(minutes=30)), NOW)


def test_answers() -> None:
    req = send_request()
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    ok = PROVIDER.parse_send_response(
        call, req, answer(200, {"Message": {"MessageSid": "M1", "To": "+447700900001"}}), NOW
    )
    bad = PROVIDER.parse_send_response(
        call,
        req,
        answer(400, {"ResponseStatus": {"ErrorCode": "InvalidTo", "Message": "bad To"}}),
        NOW,
    )

    assert [(e.status, e.provider_message_id) for e in ok.events] == [(Status.ACCEPTED, "M1")]
    assert (bad.refused, bad.error_code, bad.error_message) == (True, "InvalidTo", "bad To")


@pytest.mark.parametrize(
    ("sender", "valid"),
    [
        ("My Shop 1", True),
        ("A", True),
        ("ABCDEFGHIJK", True),
        ("+61499111222", True),  # a number is not an alphanumeric sender
        (None, True),  # a leased number
        ("12345", False),  # no letter
        ("ABCDEFGHIJKL", False),  # 12 characters
        ("Shop!", False),
        ("Büro", False),
    ],
)
def test_an_alphanumeric_sender_follows_fone_dynamics_rules(
    sender: str | None, valid: bool
) -> None:
    request = send_request(sender=sender)

    if valid:
        PROVIDER.validate_options({}, request, NOW)
    else:
        with pytest.raises(OptionsError) as refused:
            PROVIDER.validate_options({}, request, NOW)
        assert [d["field"] for d in refused.value.details] == ["from"]
