"""Ids made on the hot path."""

from __future__ import annotations

import time
import uuid

from receiver.http.requestlog import request_id
from receiver.storage.ids import time_ordered_uuid


def test_raw_ids_are_version_7_uuids_ordered_by_millisecond() -> None:
    earlier = time_ordered_uuid()
    time.sleep(0.002)
    later = time_ordered_uuid()

    assert earlier.version == 7
    assert earlier.variant == uuid.RFC_4122
    assert earlier < later
    assert abs((earlier.int >> 80) - time.time_ns() // 1_000_000) < 5_000
    assert len({time_ordered_uuid() for _ in range(10_000)}) == 10_000


def test_request_ids_are_32_hex_digits_and_differ() -> None:
    ids = {request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
