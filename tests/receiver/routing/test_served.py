"""Routing on a real `serve --sandbox`, driven as an operator would: routes imported from a
file with the CLI, a simulated provider broken with `sms-receiver sandbox set`, sends failing
over to the next provider, the circuit opening (a provider.health webhook to the subscription
that asks for it) and a probe closing it once the provider is back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from receiver import cli
from receiver.cli import main
from tests.helpers import free_port, running_serve, serve_env
from tests.receiver.tenants.test_served import subscriber, until

ROUTES = """
[[route]]
name = "uk"
match = { country = ["GB"] }
providers = ["swift", "carrierx"]
"""


async def run_cli(*argv: str) -> int:
    status: int = await asyncio.to_thread(main, list(argv))
    return status


async def test_an_operator_breaks_a_provider_and_watches_the_sends_move_and_come_back(
    dsn: str,
    db: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    assert await run_cli("routes", "import", str(routes)) == 0
    port = free_port()
    env = serve_env(
        dsn,
        port,
        SANDBOX_DELAY_S="0.1",
        SEND_ATTEMPTS="1",
        HEALTH_SEND_ERRORS="2",
        HEALTH_PROBE_S="3",  # longer than three sends take, even on a busy machine
    )
    async with subscriber() as (hook, received), aiohttp.ClientSession() as http:
        with running_serve(port, env, "--sandbox") as url:

            async def send() -> dict[str, Any]:
                body = {"to": ["+447700900001"], "from": "+447700900999", "body": "hi"}
                async with http.post(f"{url}/v1/messages", json=body) as answer:
                    sent: dict[str, Any] = await answer.json()
                    assert answer.status == 201, sent
                    recipient: dict[str, Any] = sent["recipients"][0]
                    return recipient

            filters = {"event_types": ["provider.health"]}
            async with http.post(
                f"{url}/v1/subscriptions", json={"url": hook, "filters": filters}
            ) as made:
                assert made.status == 201
            assert (await send())["provider"] == "swift"

            assert await run_cli("sandbox", "set", "swift", "down", "--url", url) == 0
            moved = [await send() for _ in range(3)]
            assert [len(r["attempts"]) for r in moved] == [2, 2, 1]  # then the circuit is open
            assert {r["provider"] for r in moved} == {"carrierx"}
            await until(lambda: len(received) >= 1, 15)
            opened = received[0]
            assert (opened["type"], opened["provider"]) == ("provider.health", "swift")
            assert opened["details"]["state"] == "degraded"
            assert opened["details"]["rule"] == "send_errors"

            assert await run_cli("sandbox", "set", "swift", "normal", "--url", url) == 0
            await asyncio.sleep(3.1)  # past HEALTH_PROBE_S: the next send is the probe
            assert (await send())["provider"] == "swift"
            await until(lambda: len(received) >= 2, 15)
            assert received[1]["details"]["state"] == "healthy"

            capsys.readouterr()
            assert await run_cli("sandbox", "show", "--url", url) == 0
            shown = capsys.readouterr().out
    assert "swift        normal" in shown
    assert "carrierx     normal" in shown
    assert "took 3" in shown
    assert json.loads(json.dumps(received))  # the bodies are plain schema-v1 JSON
