"""`sms-receiver demo`: send one message per provider through a running hub (with its sandbox)
and print each recipient's status as the simulated reports arrive."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

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
