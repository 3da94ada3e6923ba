"""Every provider's status table, entry by entry, through its real callback format; and words no
table knows become `unknown` with the word kept, never an exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from normalizers import apicontrol, carrierx, properties, swift, telecom23
from normalizers.base import CallbackRequest
from normalizers.events import EventType, Status
from normalizers.registry import DEFAULT_REGISTRY

RECEIVED_AT = datetime(2024, 6, 3, 10, 6, tzinfo=UTC)


def json_post(provider: str, body: object) -> CallbackRequest:
    return CallbackRequest(
        method="POST",
        path=f"/callbacks/{provider}",
        headers={"Content-Type": "application/json"},
        body=json.dumps(body).encode(),
    )


# One real-shaped status report per provider, carrying the word under test.
REPORT_WITH: dict[str, Callable[[str], CallbackRequest]] = {
    "apicontrol": lambda word: json_post(
        "apicontrol", {"messageID": 1, "tstamp": 1717409122, "statuses": {"447700900001": word}}
    ),
    "telecom23": lambda word: json_post(
        "telecom23", {"message_id": "api_1", "recipient": "+14155551234", "status": word}
    ),
    "properties": lambda word: CallbackRequest(
        method="GET",
        path="/callbacks/properties",
        query=urlencode(
            {
                "Event": "Message.DeliveryReceiptReceived",
                "Message.Sid": "M1",
                "Message.To": "+61488023555",
                "Message.Status": word,
            }
        ),
    ),
    "swift": lambda word: json_post(
        "swift",
        {
            "type": "sms_dlr",
            "id": "R1",
            "sms": {"id": "S1"},
            "to": "12003004001",
            "delivery_status": word,
        },
    ),
    "carrierx": lambda word: json_post(
        "carrierx",
        {"message_sid": "c1", "direction": "outbound", "to": "15162065574", "status": word},
    ),
}

TABLES = {
    "apicontrol": apicontrol.STATUS_MAP,
    "telecom23": telecom23.STATUS_MAP,
    "properties": properties.STATUS_MAP,
    "swift": swift.STATUS_MAP,
    "carrierx": carrierx.STATUS_MAP,
}

ENTRIES = [
    (provider, word, status)
    for provider, table in TABLES.items()
    for word, status in sorted(table.items())
]


def test_every_provider_has_a_table() -> None:
    assert set(TABLES) == set(DEFAULT_REGISTRY) == set(REPORT_WITH)


@pytest.mark.parametrize(("provider", "word", "expected"), ENTRIES)
def test_status_table_entry(provider: str, word: str, expected: Status) -> None:
    [event] = DEFAULT_REGISTRY[provider].parse_callback(REPORT_WITH[provider](word), RECEIVED_AT)

    if expected is Status.RECEIVED:
        assert event.type is EventType.INBOUND
    else:
        assert event.type is EventType.STATUS
        assert event.status is expected
        assert event.provider_status == word


@pytest.mark.parametrize("provider", sorted(REPORT_WITH))
@pytest.mark.parametrize("word", ["quantum_limbo", "Delivered?", "  "])
def test_an_unmapped_word_is_unknown_and_kept_verbatim(provider: str, word: str) -> None:
    events = DEFAULT_REGISTRY[provider].parse_callback(REPORT_WITH[provider](word), RECEIVED_AT)

    assert [(e.status, e.final) for e in events] == [(Status.UNKNOWN, False)]
    assert events[0].provider_status == word


@pytest.mark.parametrize("provider", sorted(REPORT_WITH))
def test_status_words_are_read_whatever_their_case(provider: str) -> None:
    table = TABLES[provider]
    word = next(w for w, s in sorted(table.items()) if s is Status.DELIVERED)

    [upper] = DEFAULT_REGISTRY[provider].parse_callback(
        REPORT_WITH[provider](word.upper()), RECEIVED_AT
    )
    [lower] = DEFAULT_REGISTRY[provider].parse_callback(
        REPORT_WITH[provider](word.lower()), RECEIVED_AT
    )

    assert upper.status is lower.status is Status.DELIVERED
