"""Scenario S, the send API: one-recipient sends (POST /v1/messages) to a `serve` whose CarrierX
is a local stub that answers at once (no reports), through a route (S) and naming the provider
(S1, the same sends without routing), interleaved, wrk at a few connections (S_CONNECTIONS in
bench/run.py). Reported: requests per second, the hub's own time per send (the request's time
in the hub minus its provider call's, from the hub's own log lines: p50/p99) and what routing
costs (S's own p50 against S1's). Checked: every answer 201, every send stored, with its
route's decision for S and none for S1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
NUMBER = "+447400123456"  # a valid UK mobile: the stub is a real provider to the hub
SENDER = "+447400900999"


# SL: S with an opt-out list this long (none of it the number sent to).
LIST_SIZE = 1_000_000


async def fill_opt_outs(connection: asyncpg.Connection, size: int) -> None:
    """`size` entries of other handsets, hashed as the hub hashes them, for the tenant sent
    as."""
    await connection.execute(
        """
        INSERT INTO opt_outs (tenant, number, number_hash, sender, source)
        SELECT 'default', n, hmac_with(p.inner_pad, p.outer_pad, n), NULL, 'import'
        FROM opt_out_pads() AS p,
             LATERAL (SELECT '+4475' || lpad(g::text, 8, '0') AS n
                      FROM generate_series(1, $1) AS g) AS numbers
        """,
        size,
    )
    # As a list that has been there a while: vacuumed (hint bits, visibility map) and its
    # writes checkpointed, not a fresh bulk load's checkpoint landing in the measured run.
    await connection.execute("VACUUM ANALYZE opt_outs")
    await connection.execute("CHECKPOINT")


def stub_app() -> web.Application:
    """CarrierX's send API, answering every send at once with a queued SMS object."""

    async def send(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "date_changed": "2026-12-03T00:00:00.000Z",
                "date_created": "2026-12-03T00:00:00.000Z",
                "direction": "outbound",
                "from": body.get("from"),
                "message": body.get("message"),
                "message_segments": 1,
                "message_sid": str(uuid.uuid4()),
                "status": "queued",
                "to": body.get("to"),
                "type": "sms",
                "user_data": body.get("user_data"),
            }
        )

    app = web.Application()
    app.router.add_post("/core/v2/sms/messages", send)
    return app


def start_hub(dsn: str, port: int, stub_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": dsn,
        "DISPATCHER": "false",
        "API_AUTH": "false",
        "LOG_LEVEL": "info",
        "DB_POOL_MAX_SIZE": "20",
        "CARRIERX__BASE_URL": f"http://127.0.0.1:{stub_port}",
        "CARRIERX__API_KEY": "bench",
        "CARRIERX__ALLOW_UNAUTHENTICATED": "true",
        "SEND_RATE_PER_S": "1000000",
        "SEND_BURST": "1000000",
        "SEND_DAILY_RECIPIENTS": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("serve did not start")


def stop_hub(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def wrk_sends(url: str, connections: int, seconds: float, named: bool) -> dict[str, Any]:
    env = {**os.environ, "SEND_BODY": json.dumps(body(named))}
    result = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "sends.lua"),
            url,
        ],
        capture_output=True,
        env=env,
        timeout=seconds + 60,
        check=True,
    )
    line = next(t for t in result.stdout.decode().splitlines() if t.startswith("JSON "))
    data: dict[str, Any] = json.loads(line[5:])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def body(named: bool) -> dict[str, Any]:
    sent: dict[str, Any] = {"to": [NUMBER], "from": SENDER, "body": "bench"}
    return sent | {"provider": "carrierx"} if named else sent


def own_times_ms(log: Path, after: float) -> list[float]:
    """Per send logged after `after` (a time.time()): the request's time in the hub minus its
    provider call's."""
    calls: dict[str, float] = {}
    requests: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        request_id = entry.get("request_id")
        if request_id is None:
            continue
        if entry.get("event") == "provider_call":
            calls[request_id] = calls.get(request_id, 0.0) + entry["latency_ms"]
        elif entry.get("event") == "request" and entry.get("path") == "/v1/messages":
            stamp = entry.get("timestamp", "")
            if stamp and _epoch(stamp) >= after and entry.get("status") == 201:
                requests[request_id] = entry["latency_ms"]
    return [total - calls[rid] for rid, total in requests.items() if rid in calls]


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def one_run(
    dsn: str, named: bool, connections: int, seconds: float, warmup: float, log: Path
) -> dict[str, Any]:
    stub = web.AppRunner(stub_app(), access_log=None)
    await stub.setup()
    stub_port = _free_port()
    await web.TCPSite(stub, "127.0.0.1", stub_port).start()
    port = _free_port()
    process = await asyncio.to_thread(start_hub, dsn, port, stub_port, log)
    url = f"http://127.0.0.1:{port}/v1/messages"
    try:
        await asyncio.to_thread(wrk_sends, url, connections, warmup, named)
        connection = await asyncpg.connect(dsn)
        await connection.execute("ANALYZE")
        await connection.close()
        started = time.time()
        run = await asyncio.to_thread(wrk_sends, url, connections, seconds, named)
    finally:
        await asyncio.to_thread(stop_hub, process)
        await stub.cleanup()
    own = own_times_ms(log, started)
    return {
        "rps": run["rps"],
        "p99_ms": run["p99_us"] / 1000,
        "non_2xx": run["errors_status"],
        "own_p50_ms": round(percentile(own, 0.5), 3),
        "own_p99_ms": round(percentile(own, 0.99), 3),
        "own_samples": len(own),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def scenario_s(
    fresh_database: Any,
    drop_database: Any,
    admin: str,
    connections: int,
    seconds: float,
    warmup: float,
    reps: int,
) -> dict[str, Any]:
    """S (routed) and S1 (named), `reps` times each, in turn, each on a new database."""
    runs: dict[str, list[dict[str, Any]]] = {"S": [], "S1": [], "SL": []}
    checks: list[bool] = []
    folder = tempfile.TemporaryDirectory(prefix="bench-s-")
    logs = Path(folder.name)
    for rep in range(reps):
        for kind in ("S", "S1", "SL"):
            name = f"bench_{kind}_{rep}".lower()
            dsn = await fresh_database(admin, name, 0)
            connection = await asyncpg.connect(dsn)
            route = json.dumps({"match": {"country": ["GB"]}, "providers": ["carrierx"]})
            await connection.execute(
                "INSERT INTO send_routes (name, position, spec) VALUES ('uk', 10, $1::jsonb)",
                route,
            )
            if kind == "SL":
                await fill_opt_outs(connection, LIST_SIZE)
            await connection.close()
            log = logs / f"bench-{name}-{uuid.uuid4().hex[:6]}.log"
            run = await one_run(dsn, kind == "S1", connections, seconds, warmup, log)
            connection = await asyncpg.connect(dsn)
            routed = await connection.fetchval(
                "SELECT count(*) FROM messages WHERE routing IS NOT NULL"
            )
            total = await connection.fetchval("SELECT count(*) FROM messages")
            refused = await connection.fetchval(
                "SELECT count(*) FROM message_recipients WHERE status = 'rejected'"
            )
            await connection.close()
            await drop_database(admin, name)
            log.unlink(missing_ok=True)
            ok = (
                run["non_2xx"] == 0
                and total > 0
                and routed == (0 if kind == "S1" else total)
                and refused == 0  # the list holds others: every send reached the provider
            )
            checks.append(ok)
            runs[kind].append(run | {"stored": total, "routed": routed, "check_ok": ok})
            print(f"  {kind} rep {rep + 1}: {run}", flush=True)
    folder.cleanup()
    summary: dict[str, Any] = {"runs": runs, "check_ok": all(checks)}
    for kind, done in runs.items():
        summary[kind] = {
            "rps": statistics.median(r["rps"] for r in done),
            "own_p50_ms": statistics.median(r["own_p50_ms"] for r in done),
            "own_p99_ms": statistics.median(r["own_p99_ms"] for r in done),
            "p99_ms": statistics.median(r["p99_ms"] for r in done),
        }
    summary["routing_cost"] = round(summary["S"]["own_p50_ms"] / summary["S1"]["own_p50_ms"] - 1, 4)
    summary["opt_out_list_cost"] = round(
        summary["SL"]["own_p50_ms"] / summary["S"]["own_p50_ms"] - 1, 4
    )
    summary["list_size"] = LIST_SIZE
    return summary
