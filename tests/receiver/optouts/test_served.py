"""Opt-outs on a real `serve --sandbox`, through each provider's own inbound format: a handset
(a number ending in 8 replies with what the message asks: `REPLY:STOP`) answers STOP; the next
send to it through that provider is `rejected: opted_out` and the simulated provider never sees
it (its own count); START, written on its own, lifts it; HELP gets the tenant's answer through
the provider it came from; an erased number stays suppressed."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg

from normalizers.registry import DEFAULT_REGISTRY
from receiver.upkeep.erasure import erase
from tests.helpers import free_port, running_serve, serve_env

# The sender each provider sends from (23 Telecom sends from a sender id).
SENDERS = {name: "+447700900990" for name in DEFAULT_REGISTRY} | {"telecom23": "MyShop"}


async def test_stop_and_help_in_every_providers_inbound_format(
    dsn: str, db: asyncpg.Connection
) -> None:
    port = free_port()
    env = serve_env(dsn, port, SCHEDULE_POLL_S="0.2")
    await db.execute("UPDATE tenants SET help_reply = 'Shop: call 0800' WHERE name = 'default'")
    handsets = {name: f"+4477009002{i}8" for i, name in enumerate(sorted(DEFAULT_REGISTRY))}
    with running_serve(port, env, "--sandbox") as url:
        async with aiohttp.ClientSession() as http:

            async def send(provider: str, to: str, text: str) -> dict[str, Any]:
                body = {"provider": provider, "to": [to], "from": SENDERS[provider], "body": text}
                async with http.post(f"{url}/v1/messages", json=body) as answer:
                    sent: dict[str, Any] = await answer.json()
                    assert answer.status == 201, (provider, sent)
                    recipient: dict[str, Any] = sent["recipients"][0]
                    return recipient

            async def sent_counts() -> dict[str, dict[str, int]]:
                async with http.get(f"{url}/v1/sandbox/sent") as answer:
                    counts: dict[str, dict[str, int]] = (await answer.json())["data"]
                    return counts

            for provider, handset in handsets.items():
                await send(provider, handset, "REPLY:STOP")
            entries: list[dict[str, Any]] = []

            async def listed() -> bool:
                nonlocal entries
                async with http.get(f"{url}/v1/opt-outs?limit=50") as answer:
                    entries = (await answer.json())["data"]
                return len(entries) == len(handsets)

            await until_async(listed, 20)
            assert {(e["number"], e["sender"]) for e in entries} == {
                (handset, SENDERS[p]) for p, handset in handsets.items()
            }, entries
            before = await sent_counts()
            for provider, handset in handsets.items():
                refused = await send(provider, handset, "hi again")
                assert (refused["status"], refused["error_code"]) == ("rejected", "opted_out")
            assert await sent_counts() == before  # no provider saw the second sends

            # START, written on the handset's own, in each provider's format, lifts it.
            for provider, handset in handsets.items():
                async with http.post(
                    f"{url}/v1/sandbox/providers/{provider}/inbound",
                    json={"handset": handset, "to": SENDERS[provider], "text": "Start"},
                ) as answer:
                    assert (await answer.json())["status"] == 200, provider

            async def lifted() -> bool:
                async with http.get(f"{url}/v1/opt-outs") as answer:
                    return not (await answer.json())["data"]

            await until_async(lifted, 20)
            for provider, handset in handsets.items():
                again = await send(provider, handset, "welcome back")
                assert again["status"] != "rejected", (provider, again)
            async with http.post(
                f"{url}/v1/opt-outs", json={"number": handsets["swift"]}
            ) as answer:
                assert answer.status == 201  # to be erased below

            # HELP, through each provider, from a handset of its own.
            helped = {name: f"+4477009003{i}8" for i, name in enumerate(sorted(DEFAULT_REGISTRY))}
            for provider, handset in helped.items():
                await send(provider, handset, "REPLY:HELP")

            async def answered() -> bool:
                rows = await db.fetch(
                    "SELECT m.provider FROM messages m WHERE m.client_ref LIKE 'help:%'"
                )
                return {row["provider"] for row in rows} == set(helped)

            await until_async(answered, 30)

    await erase(db, handsets["swift"])
    number = await db.fetchval(
        "SELECT number FROM opt_outs WHERE number_hash = opt_out_hash($1)", handsets["swift"]
    )
    assert number is None
    assert (
        await db.fetchval(
            "SELECT count(*) FROM opt_outs WHERE number_hash = opt_out_hash($1)", handsets["swift"]
        )
        == 1
    )


async def until_async(check: Any, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.2)
