"""GET /metrics: Prometheus text with the hub's counters, histograms and gauges."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient


async def test_metrics_count_callbacks_events_requests_queue_and_pool(
    client: TestClient[Any, Any], db: asyncpg.Connection
) -> None:
    await client.post(
        "/callbacks/carrierx", json={"message_sid": "m-1", "status": "delivered", "to": "1516"}
    )
    await client.post("/callbacks/carrierx", data=b"junk")

    response = await client.get("/metrics")
    text = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert 'smsr_callbacks_total{outcome="normalised",provider="carrierx"}' in text
    assert 'smsr_callbacks_total{outcome="unparsed",provider="carrierx"}' in text
    assert 'smsr_events_total{provider="carrierx",status="delivered"}' in text
    assert (
        'smsr_http_request_duration_seconds_bucket{le="0.001",method="POST",'
        'route="/callbacks/{provider}"' in text
    )
    assert 'smsr_delivery_queue{status="pending"}' in text
    assert 'smsr_db_pool_connections{state="max"} 5.0' in text


async def test_invented_methods_do_not_become_label_values(client: TestClient[Any, Any]) -> None:
    await client.request("PROPFIND", "/healthz")  # a method the parser knows, we do not

    text = await (await client.get("/metrics")).text()

    assert "PROPFIND" not in text
    assert 'method="OTHER"' in text
