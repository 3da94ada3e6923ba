"""Rate limiting by caller: a token bucket each, in this process's memory (several instances
side by side each allow the rate): the callback refusals', per source address, which must cost
less than a database call. The send API's limits are shared in Postgres
(receiver/storage/limits.py)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

# At most this many callers are remembered, the least recently seen forgotten first (a caller
# forgotten that long ago has a full bucket again, or nearly): memory and time stay bounded
# whatever the number of callers.
MAX_BUCKETS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def wait(self, who: str, now: float | None = None) -> float | None:
        """Whether `who` has a request left, without taking it: None if so, else the seconds
        until it would. A caller not seen is not remembered by asking."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(who)
        if bucket is None:
            return None
        tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate_per_s

    def take(self, who: str, now: float | None = None) -> float | None:
        """Takes one request from `who`'s bucket: None if allowed, else the seconds until it
        would be."""
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.popitem(last=False)
            bucket = self._buckets[who] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(who)
            refill = (now - bucket.updated) * self.rate_per_s
            bucket.tokens = min(float(self.burst), bucket.tokens + refill)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate_per_s


def retry_after_header(wait_s: float) -> str:
    """Retry-After in whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
