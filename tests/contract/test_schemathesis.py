"""`make test-contract`: schemathesis (every check, its stateful phase) drives a real `serve
--sandbox` with API keys on, from /openapi.json alone, after real data is seeded so that the
operations on one thing (a message, a subscription, a delivery...) reach it and not only 404s.

GET /v1/events/stream is left out: an endless answer (Server-Sent Events), which schemathesis
would hold until its timeout for every case; tests/receiver/delivery tests it as a stream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from tests.contract.conftest import CALLBACK_TOKEN, KeyedHub

# Cases per operation and phase: about 6 minutes on this machine (CONTRACT_EXAMPLES to change).
EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "100"))
MANY = 25

# Rules the document states in words only, as JSON Schema cannot state them: a schema-valid
# request may be refused (400/422) by these operations, and by no other.
UNSTATABLE = {
    # options are the provider's: which it takes depends on the provider the message goes by
    "POST /v1/messages": ["422"],
    # exactly one of url and destination (a oneOf on an object, which client generators cannot
    # read), and a webhook URL's host must resolve to an allowed address, and a RabbitMQ routing_key
    # is 255 bytes at most in UTF-8
    "POST /v1/subscriptions": ["422"],
    "PATCH /v1/subscriptions/{id}": ["422"],
    # since at most 31 days before now: a bound that moves with the clock
    "GET /v1/stats": ["400"],
    # weights and prices may name only the route's own providers (one field's values bound
    # by another's)
    "POST /v1/routes": ["422"],
    "PUT /v1/routes/{name}": ["422"],
}


def call(hub: KeyedHub, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """The hub's answer to a request with the operator's key (a 2xx, or the test fails)."""
    request = urllib.request.Request(
        hub.url + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {hub.key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        content = answer.read()
    return json.loads(content) if content else None


# A send through a simulated provider that a PUT /v1/sandbox/providers/{name} of this very run
# made `down` answers what a real provider's outage does: 502, as documented.
UPSTREAM = {"POST /v1/messages": ["502"]}


def seed(hub: KeyedHub, dictionaries: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Real things for the operations on one thing, by operation: the path parameters
    schemathesis uses for it. An operation that removes or changes a thing for good picks one
    of MANY from a dictionary (filled here)."""

    def made(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return call(hub, method, path, body)

    made("POST", "/v1/tenants", {"name": "shop"})
    numbers = [f"+4477009001{n:02d}" for n in range(MANY)]
    for number in numbers:
        made("POST", "/v1/tenants/shop/numbers", {"number": number})
    routes = [f"dropped-{n}" for n in range(MANY)]
    for name in ["kept", *routes]:
        made("POST", "/v1/routes", {"name": name, "providers": ["swift"], "enabled": False})
    subscriptions = [
        made("POST", "/v1/subscriptions", {"url": f"{hub.url}/healthz"})["id"]
        for _ in range(MANY + 1)
    ]
    sent = made(
        "POST", "/v1/messages", {"provider": "swift", "to": ["+447700900123"], "body": "hi"}
    )
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    held = [
        made(
            "POST",
            "/v1/messages",
            {"provider": "swift", "to": ["+447700900124"], "body": "later", "send_at": later},
        )["id"]
        for _ in range(2 * MANY)
    ]
    opt_outs = [
        made("POST", "/v1/opt-outs", {"number": f"+4477009009{n:02d}"})["id"] for n in range(MANY)
    ]
    unparsed = [
        made("POST", f"/callbacks/swift/{CALLBACK_TOKEN}", {"not": "a report"})["raw_id"]
        for _ in range(MANY)
    ]
    run = made("POST", "/v1/correction-runs", {})["id"]
    deadline = time.monotonic() + 60
    delivered: list[int] = []
    while time.monotonic() < deadline and not delivered:  # the simulated provider's reports
        delivered = asyncio.run(_deliveries(hub.dsn))
        time.sleep(0.5)
    assert delivered, "no delivery was made of the simulated provider's reports"
    message = made("GET", f"/v1/messages/{sent['id']}")
    provider_id = message["recipients"][0]["provider_message_id"]
    dictionaries.update(
        held=held,
        subscriptions=subscriptions[1:],
        routes=routes,
        numbers=numbers,
        opt_outs=opt_outs,
        unparsed=unparsed,
    )
    return {
        "GET /v1/messages/{id}": {"path.id": sent["id"]},
        "DELETE /v1/messages/{id}": {"path.id": {"dictionary": "held"}},
        "POST /v1/messages/{id}/cancel": {"path.id": {"dictionary": "held"}},
        "GET /v1/messages/by-provider-id/{provider}/{provider_message_id}": {
            "path.provider": "swift",
            "path.provider_message_id": provider_id,
        },
        "GET /v1/subscriptions/{id}": {"path.id": subscriptions[0]},
        "PATCH /v1/subscriptions/{id}": {"path.id": subscriptions[0]},
        "POST /v1/subscriptions/{id}/rotate-secret": {"path.id": subscriptions[0]},
        "POST /v1/subscriptions/{id}/replay": {"path.id": subscriptions[0]},
        "DELETE /v1/subscriptions/{id}": {"path.id": {"dictionary": "subscriptions"}},
        "POST /v1/deliveries/{id}/retry": {"path.id": delivered[0]},
        "GET /v1/raw-callbacks/{id}": {"path.id": unparsed[0]},
        "POST /v1/raw-callbacks/{id}/reprocess": {"path.id": {"dictionary": "unparsed"}},
        "GET /v1/correction-runs/{id}": {"path.id": run},
        "POST /v1/correction-runs/{id}/apply": {"path.id": run},
        "POST /v1/correction-runs/{id}/stop": {"path.id": run},
        "GET /v1/routes/{name}": {"path.name": "kept"},
        "PUT /v1/routes/{name}": {"path.name": "kept"},
        "DELETE /v1/routes/{name}": {"path.name": {"dictionary": "routes"}},
        "GET /v1/tenants/{name}": {"path.name": "shop"},
        "PATCH /v1/tenants/{name}": {"path.name": "shop"},
        "POST /v1/tenants/{name}/numbers": {"path.name": "shop"},
        "DELETE /v1/tenants/{name}/numbers/{number}": {
            "path.name": "shop",
            "path.number": {"dictionary": "numbers"},
        },
        "DELETE /v1/opt-outs/{id}": {"path.id": {"dictionary": "opt_outs"}},
        "POST /callbacks/{provider}/{token}": {
            "path.provider": "swift",
            "path.token": CALLBACK_TOKEN,
        },
        "GET /callbacks/{provider}/{token}": {
            "path.provider": "swift",
            "path.token": CALLBACK_TOKEN,
        },
    }


async def _deliveries(dsn: str) -> list[int]:
    connection = await asyncpg.connect(dsn)
    try:
        return [row["id"] for row in await connection.fetch("SELECT id FROM deliveries LIMIT 1")]
    finally:
        await connection.close()


def config(
    hub: KeyedHub, seeded: dict[str, dict[str, Any]], dictionaries: dict[str, list[Any]]
) -> str:
    lines = [
        f'headers = {{ Authorization = "Bearer {hub.key}" }}',
        "request-timeout = 20",
        "",
        "[checks.positive_data_acceptance]",
        'expected-statuses = ["2xx", "401", "403", "404", "409", "429"]',
    ]
    for name, values in dictionaries.items():
        lines += ["", f"[dictionaries.{name}]", f"values = {json.dumps(values)}"]
    for name in sorted(set(seeded) | set(UNSTATABLE) | set(UPSTREAM)):
        lines += ["", "[[operations]]", f"include-name = {json.dumps(name)}"]
        if name in seeded:
            lines.append(f"parameters = {_toml_table(seeded[name])}")
        if name in UNSTATABLE:
            statuses = ["2xx", "401", "403", "404", "409", "429", *UNSTATABLE[name]]
            lines += [
                "[operations.checks.positive_data_acceptance]",
                f"expected-statuses = {json.dumps(statuses + UPSTREAM.get(name, []))}",
            ]
        if name in UPSTREAM:
            lines += [
                "[operations.checks.not_a_server_error]",
                f"expected-statuses = {json.dumps(['2xx', '3xx', '4xx', *UPSTREAM[name]])}",
            ]
    return "\n".join(lines) + "\n"


def _toml_table(values: dict[str, Any]) -> str:
    def value(given: Any) -> str:
        return _toml_table(given) if isinstance(given, dict) else json.dumps(given)

    return "{ " + ", ".join(f'"{k}" = {value(v)}' for k, v in values.items()) + " }"


def schemathesis(hub: KeyedHub, settings: Path, report: Path, phases: str) -> dict[str, Any]:
    """A run of schemathesis with every check: its JSON report (the test fails on a failure)."""
    st = Path(sys.executable).parent / "st"
    run = subprocess.run(
        [
            str(st),
            "--config-file",
            str(settings),
            "run",
            f"{hub.url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            phases,
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            os.environ.get("CONTRACT_SEED", "20261203"),
            "--exclude-path",
            "/v1/events/stream",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    Path(f"/tmp/contract-{phases.replace(',', '-')}.txt").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stdout[-6000:]
    found: dict[str, Any] = json.loads(report.read_text())
    return found


def test_the_hub_keeps_its_contract(keyed_hub: KeyedHub, tmp_path: Path) -> None:
    """Two runs: the phases that take each operation alone, with the seeded things; then the
    stateful phase, whose sequences (a POST, then what its answer links to) make their own
    things and must not be told the seeded ones."""
    dictionaries: dict[str, list[Any]] = {}
    seeded = seed(keyed_hub, dictionaries)
    alone = tmp_path / "alone.toml"
    alone.write_text(config(keyed_hub, seeded, dictionaries))
    chained = tmp_path / "chained.toml"
    chained.write_text(config(keyed_hub, {}, {}))

    report = schemathesis(keyed_hub, alone, tmp_path / "alone.json", "examples,coverage,fuzzing")
    assert report["operations"]["tested"] == report["operations"]["selected"] >= 50
    # No operation was reached only by 404s: each met the real thing it is about.
    assert report["warnings"]["missing_test_data"] == []

    stateful = schemathesis(keyed_hub, chained, tmp_path / "chained.json", "stateful")
    assert stateful["test_cases"]["generated"] > 0
