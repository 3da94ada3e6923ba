"""Two tenants on one real `serve` with its simulated providers: each one's subscription, feed and
live stream receive that tenant's events alone, its handsets' replies included (one attributed
by the number the tenant owns, one by the tenant's latest send to that handset)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from receiver.storage.apikeys import create_key
from receiver.storage.tenants import add_number, create_tenant
from tests.helpers import free_port, running_serve, serve_env

HANDSET_DELIVERED = "+447700900011"
HANDSET_REPLYING = "+447700900018"  # delivered, then replies YES to the number it came from
SENDERS = {"alpha": "+447700900991", "beta": "+447700900992"}  # beta owns its number


@contextlib.asynccontextmanager
async def subscriber() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on loopback: its URL, and every event posted to it."""
    received: list[dict[str, Any]] = []

    async def take(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", take)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def read_stream(
    session: aiohttp.ClientSession, url: str, key: str, into: list[dict[str, Any]]
) -> None:
    async with session.get(
        f"{url}/v1/events/stream", headers={"Authorization": f"Bearer {key}"}
    ) as answer:
        assert answer.status == 200
        async for line in answer.content:
            if line.startswith(b"data: "):
                into.append(json.loads(line[6:]))


async def until(condition: Callable[[], bool], seconds: float) -> None:
    """Polls `condition` (the events arrive from other processes) for at most `seconds`."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - filled by other tasks and processes
            await asyncio.sleep(0.2)


def complete(events: list[dict[str, Any]], message_id: str) -> bool:
    """Both recipients final and the reply in."""
    finals = {e["recipient"] for e in events if e["message_id"] == message_id and e["final"]}
    replies = [e for e in events if e["type"] == "message.inbound"]
    return finals >= {HANDSET_DELIVERED, HANDSET_REPLYING} and bool(replies)


async def test_each_tenants_subscription_feed_and_stream_get_its_own_events_replies_included(
    dsn: str, db: asyncpg.Connection
) -> None:
    keys = {}
    for name in ("alpha", "beta"):
        await create_tenant(db, name)
        _, keys[name] = await create_key(db, f"{name}-app", ["admin"], name)
    await add_number(db, "beta", SENDERS["beta"])
    port = free_port()
    env = serve_env(dsn, port, api_auth=True, WEBHOOK_POLL_S="0.2")
    async with (
        subscriber() as (alpha_url, alpha_hooks),
        subscriber() as (beta_url, beta_hooks),
        aiohttp.ClientSession() as session,
    ):
        hooks = {"alpha": (alpha_url, alpha_hooks), "beta": (beta_url, beta_hooks)}
        with running_serve(port, env, "--sandbox") as url:

            def auth(name: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {keys[name]}"}

            streamed: dict[str, list[dict[str, Any]]] = {"alpha": [], "beta": []}
            streams = [
                asyncio.create_task(read_stream(session, url, keys[name], streamed[name]))
                for name in ("alpha", "beta")
            ]
            sent = {}
            for name in ("alpha", "beta"):
                async with session.post(
                    f"{url}/v1/subscriptions", json={"url": hooks[name][0]}, headers=auth(name)
                ) as answer:
                    assert answer.status == 201, await answer.text()
                async with session.post(
                    f"{url}/v1/messages",
                    json={
                        "provider": "carrierx",
                        "to": [HANDSET_DELIVERED, HANDSET_REPLYING],
                        "from": SENDERS[name],
                        "body": f"hello from {name}",
                    },
                    headers=auth(name),
                ) as answer:
                    assert answer.status == 201, await answer.text()
                    sent[name] = (await answer.json())["id"]

            def everything_arrived() -> bool:
                return all(
                    complete(hooks[n][1], sent[n]) and complete(streamed[n], sent[n]) for n in sent
                )

            try:
                await until(everything_arrived, 60)
            finally:
                for task in streams:
                    task.cancel()
                await asyncio.gather(*streams, return_exceptions=True)
            feeds = {}
            for name in ("alpha", "beta"):
                async with session.get(f"{url}/v1/events?limit=500", headers=auth(name)) as answer:
                    feeds[name] = (await answer.json())["data"]

    for name, other in (("alpha", "beta"), ("beta", "alpha")):
        for channel, events in (
            ("webhook", hooks[name][1]),
            ("stream", streamed[name]),
            ("feed", feeds[name]),
        ):
            assert events, f"{name}'s {channel} got nothing"
            assert {e["tenant"] for e in events} == {name}, f"{name}'s {channel}"
            assert sent[other] not in {e["message_id"] for e in events}, f"{name}'s {channel}"
            replies = [e for e in events if e["type"] == "message.inbound"]
            assert [r["recipient"] for r in replies] == [SENDERS[name]], f"{name}'s {channel}"
            assert {e["message_id"] for e in events if e["message_id"]} == {sent[name]}
