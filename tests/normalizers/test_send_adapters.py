"""The send side of every adapter: the provider's request built from ours, and each documented
answer (success and every error) read back into events."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from normalizers import apicontrol, carrierx, properties, swift, telecom23
from normalizers.base import HttpResponse, OptionsError, ProviderAccount, SendRequest
from normalizers.events import Status

NOW = datetime(2024, 6, 14, 12, 0, tzinfo=UTC)
ACCOUNT = ProviderAccount(
    base_url="http://127.0.0.1:1", api_key="k3y", account_sid="AC1", property_sid="PS1"
)


def request(n: int = 1, **changes: Any) -> SendRequest:
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
    return HttpResponse(status=status, body=json.dumps(body).encode())


# --- apicontrol --------------------------------------------------------------------------------


def test_apicontrol_builds_one_call_with_ref_callback_and_report_kind() -> None:
    req = request(2, options={"delivery_report": "per_recipient"})
    [call] = apicontrol.PROVIDER.build_send_request(req, ACCOUNT)

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


def test_apicontrol_201_accepts_every_recipient_under_the_message_id() -> None:
    req = request(2)
    [call] = apicontrol.PROVIDER.build_send_request(req, ACCOUNT)
    outcome = apicontrol.PROVIDER.parse_send_response(
        call, req, answer(201, {"messageID": 42, "num_parts": 2, "num_recipients": 2}), NOW
    )

    assert not outcome.refused
    assert outcome.segments == 2
    assert [(e.recipient, e.status, e.provider_message_id) for e in outcome.events] == [
        ("+447700900001", Status.ACCEPTED, "42"),
        ("+447700900002", Status.ACCEPTED, "42"),
    ]


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
def test_apicontrol_refusals(status: int, body: object, code: str, text: str) -> None:
    req = request()
    [call] = apicontrol.PROVIDER.build_send_request(req, ACCOUNT)
    outcome = apicontrol.PROVIDER.parse_send_response(call, req, answer(status, body), NOW)

    assert outcome.refused
    assert outcome.error_code == code
    assert text in (outcome.error_message or "")
    assert [e.status for e in outcome.events] == [Status.REJECTED]


def test_apicontrol_rejects_unknown_options() -> None:
    with pytest.raises(OptionsError) as raised:
        apicontrol.PROVIDER.validate_options({"delivery_report": "weekly", "x": 1}, request(), NOW)

    assert {d["field"] for d in raised.value.details} == {"options.delivery_report", "options.x"}


# --- telecom23 ---------------------------------------------------------------------------------


def test_telecom23_splits_into_batches_of_100() -> None:
    calls = telecom23.PROVIDER.build_send_request(request(250), ACCOUNT)

    assert [len(call.recipients) for call in calls] == [100, 100, 50]
    assert calls[0].headers == {"X-API-Key": "k3y"}
    assert calls[2].json_body == {
        "to": list(calls[2].recipients),
        "message": "Hello",
        "sender_id": "+447700900999",
    }


def test_telecom23_reads_per_recipient_results() -> None:
    req = request(3)
    [call] = telecom23.PROVIDER.build_send_request(req, ACCOUNT)
    body = {
        "status": True,
        "results": [
            {"dnis": "+447700900001", "message_id": "api_1", "segments": 1, "status": "accepted"},
            {"dnis": "+447700900002", "segments": 1, "status": "blocked_country"},
            {"dnis": "+447700900003", "segments": 1, "status": "queue_error"},
        ],
        "summary": {"total_segments": 3},
    }
    outcome = telecom23.PROVIDER.parse_send_response(call, req, answer(200, body), NOW)

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
def test_telecom23_errors(status: int, code: str, expected: Status, retry: bool) -> None:
    req = request()
    [call] = telecom23.PROVIDER.build_send_request(req, ACCOUNT)
    body = {"status": False, "error_code": code, "description": "explained"}
    outcome = telecom23.PROVIDER.parse_send_response(call, req, answer(status, body), NOW)

    assert outcome.refused
    assert outcome.retry is retry
    assert outcome.error_code == code
    assert [e.status for e in outcome.events] == [expected]


# --- properties --------------------------------------------------------------------------------


def test_properties_one_call_per_recipient_with_receipt_webhook_and_basic_auth() -> None:
    req = request(2, send_at=NOW + timedelta(days=1), options={"delivery_receipt_method": "GET"})
    calls = properties.PROVIDER.build_send_request(req, ACCOUNT)

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


def test_properties_leased_sender_asks_for_replies_too() -> None:
    req = request(sender=None, options={"forward_to_email": "ops@example.com"})
    [call] = properties.PROVIDER.build_send_request(req, ACCOUNT)

    assert call.json_body is not None
    assert call.json_body["From"] == ""
    assert call.json_body["WebhookUri"] == "http://127.0.0.1:8080/callbacks/x"
    assert call.json_body["ForwardToEmail"] == "ops@example.com"


@pytest.mark.parametrize(
    ("send_at", "expires_at", "field"),
    [
        (NOW + timedelta(days=15), None, "send_at"),
        (NOW - timedelta(hours=2), None, "send_at"),
        (None, NOW + timedelta(hours=1), "expires_at"),
    ],
)
def test_properties_schedule_rules(
    send_at: datetime | None, expires_at: datetime | None, field: str
) -> None:
    with pytest.raises(OptionsError) as raised:
        properties.PROVIDER.validate_options(
            {}, request(send_at=send_at, expires_at=expires_at), NOW
        )

    assert [d["field"] for d in raised.value.details] == [field]


def test_properties_a_schedule_less_than_an_hour_late_is_fine() -> None:
    properties.PROVIDER.validate_options({}, request(send_at=NOW - timedelta(minutes=30)), NOW)


def test_properties_answers() -> None:
    req = request()
    [call] = properties.PROVIDER.build_send_request(req, ACCOUNT)
    ok = properties.PROVIDER.parse_send_response(
        call, req, answer(200, {"Message": {"MessageSid": "M1", "To": "+447700900001"}}), NOW
    )
    bad = properties.PROVIDER.parse_send_response(
        call,
        req,
        answer(400, {"ResponseStatus": {"ErrorCode": "InvalidTo", "Message": "bad To"}}),
        NOW,
    )

    assert [(e.status, e.provider_message_id) for e in ok.events] == [(Status.ACCEPTED, "M1")]
    assert (bad.refused, bad.error_code, bad.error_message) == (True, "InvalidTo", "bad To")


# --- swift -------------------------------------------------------------------------------------


def swift_result(to: str, code: str = "OK", parts: int = 1) -> dict[str, Any]:
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


def test_swift_builds_one_call_without_plus() -> None:
    [call] = swift.PROVIDER.build_send_request(request(2), ACCOUNT)

    assert call.json_body == {
        "body": "Hello",
        "to": ["447700900001", "447700900002"],
        "request_dlr": True,
        "from": "447700900999",
        "id": "ref-1",
    }
    assert call.headers == {"Authorization": "Bearer k3y"}


def test_swift_200_207_422() -> None:
    req = request(2)
    [call] = swift.PROVIDER.build_send_request(req, ACCOUNT)
    ok = swift.PROVIDER.parse_send_response(
        call,
        req,
        answer(
            200, {"results": [swift_result("447700900001", parts=2), swift_result("447700900002")]}
        ),
        NOW,
    )
    partial = swift.PROVIDER.parse_send_response(
        call,
        req,
        answer(
            207,
            {
                "results": [
                    swift_result("447700900001"),
                    swift_result("447700900002", "recipient_error"),
                ]
            },
        ),
        NOW,
    )
    failed = swift.PROVIDER.parse_send_response(
        call,
        req,
        answer(
            422,
            {
                "results": [
                    swift_result("447700900001", "ACCOUNT_SMS_DISABLED"),
                    swift_result("447700900002", "temporary_error"),
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


def test_swift_has_no_send_time() -> None:
    with pytest.raises(OptionsError):
        swift.PROVIDER.validate_options({}, request(send_at=NOW), NOW)


# --- carrierx ----------------------------------------------------------------------------------


def test_carrierx_one_call_per_recipient_with_mms_options() -> None:
    req = request(2, options={"type": "mms", "media_urls": ["https://example.com/a.png"]})
    calls = carrierx.PROVIDER.build_send_request(req, ACCOUNT)

    assert [c.recipients for c in calls] == [("+447700900001",), ("+447700900002",)]
    assert calls[0].json_body == {
        "from": "447700900999",
        "to": "447700900001",
        "message": "Hello",
        "type": "mms",
        "media_urls": ["https://example.com/a.png"],
        "user_data": "ref-1",
    }


def test_carrierx_answers() -> None:
    req = request()
    [call] = carrierx.PROVIDER.build_send_request(req, ACCOUNT)
    sms = {
        "message_sid": "sid-1",
        "status": "queued",
        "to": "447700900001",
        "from": "447700900999",
        "message_segments": 1,
        "direction": "outbound",
    }
    ok = carrierx.PROVIDER.parse_send_response(call, req, answer(200, sms), NOW)
    bad = carrierx.PROVIDER.parse_send_response(
        call, req, answer(401, {"message": "unauthorized"}), NOW
    )
    down = carrierx.PROVIDER.parse_send_response(call, req, answer(503, {}), NOW)

    assert [(e.status, e.provider_message_id) for e in ok.events] == [(Status.QUEUED, "sid-1")]
    assert (bad.refused, bad.error_message, bad.events[0].status) == (
        True,
        "unauthorized",
        Status.REJECTED,
    )
    assert (down.refused, down.retry, down.events[0].status) == (True, False, Status.UNKNOWN)
    assert (down.error_code, down.events[0].failure_kind) == ("outcome_unknown", None)


def test_carrierx_options_are_checked() -> None:
    with pytest.raises(OptionsError):
        carrierx.PROVIDER.validate_options({"media_urls": ["not a url"]}, request(), NOW)


def test_send_answer_event_ids_differ_between_messages() -> None:
    first, second = request(message_id="m-1"), request(message_id="m-2")
    [call] = apicontrol.PROVIDER.build_send_request(first, ACCOUNT)
    body = answer(401, {"status_code": 401, "status_msg": "Unauthorized"})

    a = apicontrol.PROVIDER.parse_send_response(call, first, body, NOW)
    b = apicontrol.PROVIDER.parse_send_response(call, second, body, NOW)

    assert a.events[0].id != b.events[0].id
