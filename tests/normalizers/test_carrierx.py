"""CarrierX: its callbacks (fixtures shaped as the provider documents them, and its status
table) and its send adapter (one call per recipient, MMS options, answers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given

from normalizers.base import CallbackRequest, OptionsError, ParseError
from normalizers.carrierx import NAME, PROVIDER, STATUS_MAP
from normalizers.events import EventType, Price, Status
from tests.corpus import FIXTURES, Case
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

RECEIVED_AT = datetime(2023, 12, 6, 15, 30, tzinfo=UTC)


def fixture(name: str) -> dict[str, Any]:
    """The body of a corpus case."""
    data: dict[str, Any] = json.loads((FIXTURES / NAME / name).read_text())["request"]["body"]
    return data


# --- callbacks ---------------------------------------------------------------------------------


def post(payload: object) -> CallbackRequest:
    return json_post(NAME, payload)


def status_report(word: str) -> CallbackRequest:
    """A real-shaped CarrierX SMS-object callback carrying `word` (test_every_provider uses it)."""
    return post({"message_sid": "c1", "direction": "outbound", "to": "15162065574", "status": word})


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


def test_delivered_report_fills_every_field_the_payload_has() -> None:
    [event] = PROVIDER.parse_callback(post(fixture("outbound_delivered.json")), RECEIVED_AT)

    assert event.type is EventType.STATUS
    assert event.provider == "carrierx"
    assert event.status is Status.DELIVERED
    assert event.final is True
    assert event.provider_status == "delivered"
    assert event.provider_message_id == "097b49df-c54e-4eaf-97d0-89cf7d5a655b"
    assert event.recipient == "+15162065574"
    assert event.sender == "+15162065575"
    assert event.occurred_at == datetime(2023, 12, 6, 15, 18, 33, 512000, tzinfo=UTC)
    assert event.occurred_at_source == "provider"
    assert event.received_at == RECEIVED_AT
    assert event.client_ref == "order-42"
    assert event.segments == 1
    assert event.price == Price(amount="0.0025", currency="USD")
    assert event.id.startswith("evt_")


def test_legacy_did_field_names_are_read() -> None:
    [event] = PROVIDER.parse_callback(post(fixture("outbound_sent_legacy.json")), RECEIVED_AT)

    assert event.status is Status.SENT
    assert event.final is False
    assert event.sender == "+15162065919"
    assert event.recipient == "+15162065574"
    assert event.price is None
    assert event.client_ref is None


def test_inbound_sms_is_a_message_inbound_event() -> None:
    [event] = PROVIDER.parse_callback(post(fixture("inbound_sms.json")), RECEIVED_AT)

    assert event.type is EventType.INBOUND
    assert event.status is Status.RECEIVED
    assert event.sender == "+15162065574"  # the handset that wrote
    assert event.recipient == "+15162065575"  # our number
    assert event.text == "Yes, see you at 5"
    assert event.occurred_at == datetime(2023, 12, 6, 15, 20, 0, 731000, tzinfo=UTC)


def test_inbound_mms_without_text_is_an_inbound_event_with_no_text() -> None:
    # Schema v1 has no field for media: the URLs stay in the stored raw callback.
    [event] = PROVIDER.parse_callback(post(fixture("inbound_mms.json")), RECEIVED_AT)

    assert event.type is EventType.INBOUND
    assert event.text is None
    assert event.provider_message_id == "5b0d4f7a-1c2e-4f3a-9e8d-7c6b5a4f3e21"


def test_group_mms_gives_one_event_per_handset_but_not_the_sender() -> None:
    events = PROVIDER.parse_callback(post(fixture("outbound_group_mms_queued.json")), RECEIVED_AT)

    assert [e.recipient for e in events] == ["+15162065574", "+15162065576"]
    assert {e.status for e in events} == {Status.QUEUED}
    assert len({e.id for e in events}) == 2


def test_the_same_report_twice_has_the_same_id_and_another_status_another() -> None:
    payload = fixture("outbound_delivered.json")
    [first] = PROVIDER.parse_callback(post(payload), RECEIVED_AT)
    [again] = PROVIDER.parse_callback(post(payload), datetime.now(UTC))
    [sent] = PROVIDER.parse_callback(post(payload | {"status": "sent"}), RECEIVED_AT)

    assert first.id == again.id
    assert sent.id != first.id


def test_without_a_timestamp_the_receipt_time_is_used() -> None:
    payload = fixture("outbound_delivered.json")
    for key in ("date_changed", "date_status_changed", "date_created"):
        payload.pop(key)
    [event] = PROVIDER.parse_callback(post(payload), RECEIVED_AT)

    assert event.occurred_at == RECEIVED_AT
    assert event.occurred_at_source == "received"


def test_an_array_of_objects_gives_an_event_each() -> None:
    events = PROVIDER.parse_callback(
        post([fixture("outbound_delivered.json"), fixture("inbound_sms.json")]), RECEIVED_AT
    )

    assert [e.type for e in events] == [EventType.STATUS, EventType.INBOUND]


def test_a_form_body_and_a_query_string_are_read_too() -> None:
    fields = "message_sid=abc&status=sent&to=15162065574&from=15162065575"
    form = CallbackRequest(
        method="POST",
        path="/callbacks/carrierx",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=fields.encode(),
    )
    query = CallbackRequest(method="GET", path="/callbacks/carrierx", query=fields)

    for request in (form, query):
        [event] = PROVIDER.parse_callback(request, RECEIVED_AT)
        assert event.provider_message_id == "abc"
        assert event.status is Status.SENT


@pytest.mark.parametrize(
    "body",
    [b"not json at all", b"{broken", b"[]", b"[1, 2]", b'{"status": "sent"}', b"\xff\xfe"],
)
def test_garbage_raises_parse_error(body: bytes) -> None:
    request = CallbackRequest(method="POST", path="/callbacks/carrierx", body=body)

    with pytest.raises(ParseError):
        PROVIDER.parse_callback(request, RECEIVED_AT)


def test_group_recipients_as_text_from_a_form_are_split_on_commas() -> None:
    fields = "message_sid=g1&status=sent&to=15162065574&group_recipients=15162065576,15162065577"
    request = CallbackRequest(method="GET", path="/callbacks/carrierx", query=fields)

    events = PROVIDER.parse_callback(request, RECEIVED_AT)

    assert [e.recipient for e in events] == ["+15162065574", "+15162065576", "+15162065577"]


# --- send --------------------------------------------------------------------------------------


def test_one_call_per_recipient_with_mms_options() -> None:
    req = send_request(2, options={"type": "mms", "media_urls": ["https://example.com/a.png"]})
    calls = PROVIDER.build_send_request(req, ACCOUNT)

    assert [c.recipients for c in calls] == [("+447700900001",), ("+447700900002",)]
    assert calls[0].json_body == {
        "from": "447700900999",
        "to": "447700900001",
        "message": "Hello",
        "type": "mms",
        "media_urls": ["https://example.com/a.png"],
        "user_data": "ref-1",
    }


def test_answers() -> None:
    req = send_request()
    [call] = PROVIDER.build_send_request(req, ACCOUNT)
    sms = {
        "message_sid": "sid-1",
        "status": "queued",
        "to": "447700900001",
        "from": "447700900999",
        "message_segments": 1,
        "direction": "outbound",
    }
    ok = PROVIDER.parse_send_response(call, req, answer(200, sms), NOW)
    bad = PROVIDER.parse_send_response(call, req, answer(401, {"message": "unauthorized"}), NOW)
    down = PROVIDER.parse_send_response(call, req, answer(503, {}), NOW)

    assert [(e.status, e.provider_message_id) for e in ok.events] == [(Status.QUEUED, "sid-1")]
    assert (bad.refused, bad.error_message, bad.events[0].status) == (
        True,
        "unauthorized",
        Status.REJECTED,
    )
    assert (down.refused, down.retry, down.events[0].status) == (True, False, Status.UNKNOWN)
    assert (down.error_code, down.events[0].failure_kind) == ("outcome_unknown", None)


def test_options_are_checked() -> None:
    with pytest.raises(OptionsError):
        PROVIDER.validate_options({"media_urls": ["not a url"]}, send_request(), NOW)


@pytest.mark.parametrize(
    ("options", "length", "valid"),
    [
        ({"type": "mms"}, 1600, True),
        ({"type": "mms"}, 1601, False),
        ({"media_urls": ["https://example.com/a.png"]}, 1601, False),
        ({}, 1601, True),  # an SMS: split into parts, no such limit
    ],
)
def test_an_mms_text_is_at_most_1600_characters(
    options: dict[str, Any], length: int, valid: bool
) -> None:
    request = send_request(body="x" * length)

    if valid:
        PROVIDER.validate_options(options, request, NOW)
    else:
        with pytest.raises(OptionsError) as refused:
            PROVIDER.validate_options(options, request, NOW)
        assert [d["field"] for d in refused.value.details] == ["body"]
