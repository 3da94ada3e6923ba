"""The helpers every normaliser shares: numbers, timestamps, ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from normalizers import apicontrol
from normalizers.base import CallbackRequest, decimal_string, int_or_none, parse_timestamp, to_e164
from normalizers.events import FINAL_STATUSES, STATUS_RANK, Status, event_id
from tests.normalizers.support import ACCOUNT, NOW, answer, send_request


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("15162065574", "+15162065574"),
        ("+44 7700 900123", "+447700900123"),
        ("0044-7700-900123", "+447700900123"),
        ("(516) 206-5574", "+5162065574"),
        ("ACME", "ACME"),
        ("", None),
        (None, None),
        (447700900123, "+447700900123"),
        ("١٥١٦٢٠٦٥٥٧٤", "١٥١٦٢٠٦٥٥٧٤"),  # not ASCII digits: not a phone number
    ],
)
def test_to_e164(raw: object, expected: str | None) -> None:
    assert to_e164(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2023-12-06T15:18:29.189Z", datetime(2023, 12, 6, 15, 18, 29, 189000, tzinfo=UTC)),
        ("2024-06-03 10:05:22", datetime(2024, 6, 3, 10, 5, 22, tzinfo=UTC)),
        ("2024-06-03T10:05:22-0300", datetime(2024, 6, 3, 13, 5, 22, tzinfo=UTC)),
        (1700000000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        ("1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (1717409122000, datetime(2024, 6, 3, 10, 5, 22, tzinfo=UTC)),  # milliseconds
        ("0001-01-01T00:00:00+05:00", None),  # out of range once in UTC
        ("9999-12-31T23:00:00-05:00", None),
        ("yesterday", None),
        (None, None),
        (True, None),
    ],
)
def test_parse_timestamp(raw: object, expected: datetime | None) -> None:
    assert parse_timestamp(raw) == expected


def test_parse_timestamp_converts_offsets_to_utc() -> None:
    moment = parse_timestamp("2024-06-03T10:05:22+02:00")
    assert moment == datetime(2024, 6, 3, 10, 5, 22, tzinfo=timezone(timedelta(hours=2)))
    assert moment is not None
    assert moment.tzinfo == UTC


def test_event_id_is_stable_and_separates_its_parts() -> None:
    assert event_id("p", "a", "b") == event_id("p", "a", "b")
    assert event_id("p", "ab", "") != event_id("p", "a", "b")
    assert event_id("p", None) == event_id("p", "")
    assert event_id("p", "a") != event_id("q", "a")


def test_every_status_has_a_rank_and_finals_outrank_the_rest() -> None:
    assert set(STATUS_RANK) == set(Status)
    lowest_final = min(STATUS_RANK[s] for s in FINAL_STATUSES)
    assert all(STATUS_RANK[s] < lowest_final for s in set(Status) - FINAL_STATUSES)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3, 3),
        ("12", 12),
        (2.0, 2),
        ("²", None),
        (-1, None),
        (2**40, None),
        (True, None),
        ("x", None),
    ],
)
def test_int_or_none(raw: object, expected: int | None) -> None:
    assert int_or_none(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0.0085, "0.0085"), ("0.05", "0.0500"), ("1e200000000", None), ("NaN", None), ("abc", None)],
)
def test_decimal_string(raw: object, expected: str | None) -> None:
    assert decimal_string(raw) == expected


def test_a_byte_order_mark_before_json_is_read() -> None:
    request = CallbackRequest(method="POST", path="/x", body=b'\xef\xbb\xbf{"a": 1}')

    assert request.fields() == {"a": 1}


def test_event_id_takes_lone_surrogates() -> None:
    assert event_id("p", "a\ud800") != event_id("p", "a")


def test_send_answer_event_ids_differ_between_messages() -> None:
    # send_answer_event puts our message's id in the event id; seen through apicontrol's adapter.
    first, second = send_request(message_id="m-1"), send_request(message_id="m-2")
    [call] = apicontrol.PROVIDER.build_send_request(first, ACCOUNT)
    body = answer(401, {"status_code": 401, "status_msg": "Unauthorized"})

    a = apicontrol.PROVIDER.parse_send_response(call, first, body, NOW)
    b = apicontrol.PROVIDER.parse_send_response(call, second, body, NOW)

    assert a.events[0].id != b.events[0].id
