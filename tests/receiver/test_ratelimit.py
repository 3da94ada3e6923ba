"""Token buckets per caller, and the send API's rate limit: per API key, a burst then the
sustained rate, 429 with Retry-After beyond."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver import ratelimit
from receiver.config import Settings
from receiver.ratelimit import RateLimiter, retry_after_header
from receiver.storage.apikeys import create_key
from receiver.storage.tenants import create_tenant

Client = TestClient[Any, Any]


def test_a_bucket_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate_per_s=2.0, burst=3)

    assert [limiter.take("a", now=0.0) for _ in range(3)] == [None, None, None]
    assert limiter.take("a", now=0.0) == pytest.approx(0.5)  # one token in half a second
    assert limiter.take("b", now=0.0) is None  # every caller has a bucket of its own
    assert limiter.take("a", now=0.5) is None
    assert limiter.take("a", now=0.6) == pytest.approx(0.4)  # 0.2 of a token back
    assert limiter.take("a", now=100.0) is None  # refilled, never above the burst
    assert [limiter.take("a", now=100.0) for _ in range(3)][-1] is not None


def test_wait_tells_without_taking_and_remembers_no_stranger() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2)

    assert limiter.wait("a", now=0.0) is None
    assert "a" not in limiter._buckets  # asking costs no memory
    limiter.take("a", now=0.0)
    limiter.take("a", now=0.0)
    assert limiter.wait("a", now=0.0) == pytest.approx(1.0)
    assert limiter.wait("a", now=0.0) == pytest.approx(1.0)  # asking took nothing
    assert limiter.wait("a", now=1.0) is None


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings(
        database_url=dsn, db_pool_min_size=0, api_auth=True, send_rate_per_s=0.5, send_burst=2
    )


async def test_a_tenant_over_its_rate_gets_429_with_retry_after(
    client: Client, db: asyncpg.Connection
) -> None:
    await create_tenant(db, "other")
    (_, first), (_, second), (_, same_tenant) = (
        await create_key(db, "a", ["send"]),
        await create_key(db, "b", ["send"], "other"),
        await create_key(db, "c", ["send"]),
    )
    body = {"provider": "carrierx", "to": ["+15550000001"], "from": "+15550000002", "body": "hi"}

    def send(key: str) -> Any:
        return client.post("/v1/messages", json=body, headers={"Authorization": f"Bearer {key}"})

    answers = [await send(first) for _ in range(3)]

    assert [a.status for a in answers[:2]] != [429, 429]  # the burst goes through
    assert answers[2].status == 429
    assert answers[2].headers["Retry-After"] == "2"
    error = (await answers[2].json())["error"]
    assert error["code"] == "rate_limited"
    assert (await send(second)).status != 429  # another tenant, another bucket
    assert (await send(same_tenant)).status == 429  # the tenant's keys share theirs


def test_memory_stays_bounded_and_the_quietest_caller_is_forgotten_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 3)
    limiter = RateLimiter(rate_per_s=1.0, burst=1)
    for who in ("a", "b", "c"):
        limiter.take(who, now=0.0)
    limiter.take("a", now=0.1)  # a is active again: b is now the quietest

    limiter.take("d", now=0.2)

    assert set(limiter._buckets) == {"a", "c", "d"}
