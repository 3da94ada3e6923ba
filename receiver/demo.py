"""`sms-receiver demo`: send one message per provider through a running hub (with its sandbox)
and print each recipient's status as the simulated reports arrive; `--failover`: watch a route
move its messages off a provider that goes down."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from normalizers.registry import DEFAULT_REGISTRY
from receiver.storage.events import replies_since
from receiver.storage.messages import recipient_statuses

PROVIDERS = tuple(DEFAULT_REGISTRY)  # every provider the hub has, each with its simulation
# Last digits: 1 delivered, 2 undelivered, 5 reported twice and late, 8 replies (README).
NUMBERS = ("+447700900001", "+447700900002", "+447700900005", "+447700900008")


async def run_demo(
    base_url: str,
    dsn: str,
    seconds: float = 8.0,
    emit: Callable[[str], None] = print,
    api_key: str | None = None,
) -> int:
    message_ids: dict[str, uuid.UUID] = {}
    started = datetime.now(UTC)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        for provider in PROVIDERS:
            payload = {
                "provider": provider,
                "to": list(NUMBERS),
                "from": "+447700900999",
                "body": f"Hello from the hub via {provider}",
                "ref": f"demo-{provider}",
            }
            async with http.post(f"{base_url.rstrip('/')}/v1/messages", json=payload) as answer:
                body = await answer.json()
                if answer.status != 201:
                    emit(f"{provider}: HTTP {answer.status} {body}")
                    continue
                message_ids[provider] = uuid.UUID(body["id"])
                emit(
                    f"{provider}: sent as {body['id']} ({body['segments']} segment,"
                    f" {body['encoding']})"
                )
    if not message_ids:
        return 1
    connection = await asyncpg.connect(dsn)
    seen: dict[tuple[str, str], str] = {}
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            rows = await recipient_statuses(connection, list(message_ids.values()))
            for row in rows:
                key = (row["provider"], row["recipient"])
                if seen.get(key) != row["status"]:
                    before = seen.get(key, "-")
                    emit(f"  {row['provider']:<10} {row['recipient']}  {before} -> {row['status']}")
                    seen[key] = row["status"]
            await asyncio.sleep(0.2)
        replies = await replies_since(connection, list(message_ids), started)
        for reply in replies:
            emit(f"  {reply['provider']:<10} reply from {reply['sender']}: {reply['text']!r}")
    finally:
        await connection.close()
    return 0


FAILOVER_ROUTE = "demo-failover"


async def run_failover_demo(
    base_url: str, emit: Callable[[str], None] = print, api_key: str | None = None
) -> int:
    """`demo --failover`: a route over swift then carrierx; sends go over swift; swift goes
    down; the next sends move to carrierx in the same call (attempt 2); swift comes back. The
    route is removed and swift restored at the end, whatever happened."""
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    route = {
        "match": {"country": ["GB"]},
        "providers": ["swift", "carrierx"],
        "position": 0,
    }
    async with aiohttp.ClientSession(headers=headers) as http:

        async def call(method: str, path: str, body: object = None) -> tuple[int, Any]:
            async with http.request(method, base + path, json=body) as answer:
                return answer.status, await answer.json(content_type=None)

        status, made = await call("PUT", f"/v1/routes/{FAILOVER_ROUTE}", route)
        if status >= 300:
            emit(f"cannot make the route: HTTP {status} {made}")
            return 1
        emit(f"route {FAILOVER_ROUTE}: GB over swift, then carrierx")

        async def send_some(what: str) -> bool:
            emit(what)
            for n in range(3):
                payload = {
                    "to": [f"+44770090000{n + 1}"],
                    "from": "+447700900999",
                    "body": f"failover demo {n + 1}",
                    "ref": f"demo-failover-{n + 1}",
                }
                status, body = await call("POST", "/v1/messages", payload)
                if status != 201:
                    emit(f"  HTTP {status} {body}")
                    return False
                [recipient] = body["recipients"]
                steps = " -> ".join(
                    f"{a['provider']} ({a['error_code'] or a['status']})"
                    for a in recipient["attempts"]
                )
                emit(f"  {payload['to'][0]}: {steps}; carried by {recipient['provider']}")
            return True

        try:
            ok = await send_some("swift is up: the route's first provider carries them")
            await call("PUT", "/v1/sandbox/providers/swift", {"mode": "down"})
            ok = ok and await send_some("swift is down (503 to every send): they move on")
            await call("PUT", "/v1/sandbox/providers/swift", {"mode": "normal"})
            _, providers = await call("GET", "/v1/sandbox/providers")
            for provider in providers.get("data", []):
                if provider["name"] in ("swift", "carrierx"):
                    emit(f"{provider['name']} took {provider['sent']} recipients in all")
        finally:
            await call("PUT", "/v1/sandbox/providers/swift", {"mode": "normal"})
            await call("DELETE", f"/v1/routes/{FAILOVER_ROUTE}")
    return 0 if ok else 1
