"""Row keys the hub makes up on the hot path."""

from __future__ import annotations

import random
import time
import uuid


def time_ordered_uuid() -> uuid.UUID:
    """A version 7 UUID (RFC 9562): milliseconds since the epoch, then 74 random bits. Rows
    stored together sit together in their primary key's index, instead of scattered over it as
    random (version 4) ids are, which costs the database a page write for nearly every insert.
    The random bits need not be unpredictable (nothing is guarded by knowing an id), so they
    come from the seeded generator (reseeded in a forked child) rather than a system call per id."""
    milliseconds = time.time_ns() // 1_000_000
    bits = random.getrandbits(74)
    value = (
        (milliseconds & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (bits >> 62) << 64
        | 0b10 << 62
        | (bits & (1 << 62) - 1)
    )
    return uuid.UUID(int=value)
