"""How many SMS segments a text takes, and in which encoding (GSM-7 or UCS-2), computed locally
so that it can be stored with the message and compared with what the provider bills.

The GSM 03.38 tables are written out here: they are 138 characters of standard data, and the
PyPI packages that carry them are unmaintained and untyped; a table reviewed line by line earns
its place better than a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# GSM 03.38 default alphabet (the escape code 0x1B is not a character and is left out).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each takes two septets (escape + code).
GSM_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM_SINGLE, GSM_PART = 160, 153  # septets
UCS2_SINGLE, UCS2_PART = 70, 67  # UTF-16 code units

Encoding = Literal["GSM-7", "UCS-2"]


@dataclass(frozen=True, slots=True)
class Segmentation:
    encoding: Encoding
    segments: int
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2


def is_gsm7(text: str) -> bool:
    return all(char in GSM_BASIC or char in GSM_EXTENSION for char in text)


def segment(text: str) -> Segmentation:
    """Segments as handsets count them: a multi-part message loses room to its header (153
    septets or 67 units a part), and an escape pair or a surrogate pair is never split."""
    if is_gsm7(text):
        sizes = [2 if char in GSM_EXTENSION else 1 for char in text]
        return Segmentation("GSM-7", _parts(sizes, GSM_SINGLE, GSM_PART), sum(sizes))
    sizes = [2 if ord(char) > 0xFFFF else 1 for char in text]
    return Segmentation("UCS-2", _parts(sizes, UCS2_SINGLE, UCS2_PART), sum(sizes))


def _parts(sizes: list[int], single: int, part: int) -> int:
    if sum(sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > part:
            parts, used = parts + 1, 0
        used += size
    return parts
