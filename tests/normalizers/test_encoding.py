"""Segment counts for GSM-7, its extension characters, and UCS-2."""

from __future__ import annotations

import pytest

from normalizers.encoding import segment


@pytest.mark.parametrize(
    ("text", "encoding", "segments", "units"),
    [
        ("Hello", "GSM-7", 1, 5),
        ("a" * 160, "GSM-7", 1, 160),
        ("a" * 161, "GSM-7", 2, 161),
        ("a" * 306, "GSM-7", 2, 306),
        ("a" * 307, "GSM-7", 3, 307),
        ("€" * 80, "GSM-7", 1, 160),  # extension characters count twice
        ("€" * 81, "GSM-7", 2, 162),
        ("a" * 152 + "€", "GSM-7", 1, 154),  # 154 septets still fit one segment of 160
        ("a" * 152 + "€" + "a" * 7, "GSM-7", 2, 161),  # the escape pair moves whole to part 2
        ("Ça coûte 5 €", "UCS-2", 1, 12),  # û is not in GSM 03.38
        ("Привет", "UCS-2", 1, 6),
        ("я" * 70, "UCS-2", 1, 70),
        ("я" * 71, "UCS-2", 2, 71),
        ("я" * 134, "UCS-2", 2, 134),
        ("я" * 135, "UCS-2", 3, 135),
        ("😀" * 35, "UCS-2", 1, 70),  # each emoji is a surrogate pair: two units
        ("a" * 66 + "😀" + "a" * 4, "UCS-2", 2, 72),  # the pair is not split across parts
    ],
)
def test_segments(text: str, encoding: str, segments: int, units: int) -> None:
    result = segment(text)

    assert (result.encoding, result.segments, result.units) == (encoding, segments, units)


def test_the_gsm_tables_hold_exactly_the_standard_characters() -> None:
    from normalizers.encoding import GSM_BASIC, GSM_EXTENSION

    assert len(GSM_BASIC) == 127  # 128 codes less the escape
    assert len(GSM_EXTENSION) == 10
