"""Scenarios E, E0 and F of `make bench` (see run.py): the dispatcher draining events to local
subscribers, the same HTTP client with no database, and the end-to-end latency at a fixed rate."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from bench.tokens import callback_path, token_env

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="


class Sink:
    """A local subscriber that checks every signature and remembers what arrived, when."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.bad_signatures = 0
        self.webhook = Webhook(SECRET)
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = self.webhook.verify(body, dict(request.headers))
        except Exception:
            self.bad_signatures += 1
            return web.Response(status=400)
        self.received.setdefault(event["id"], time.perf_counter())
        return web.Response(text="ok")

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def seed_events(dsn: str, count: int, sink_urls: list[str]) -> None:
    """`count` stored events (through the real ingest function) and a subscription per sink."""
    from normalizers.carrierx import PROVIDER
    from receiver.storage import callbacks

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("ALTER TABLE events DISABLE TRIGGER events_queue_deliveries")
        for start in range(0, count, 500):
            async with connection.transaction():
                for n in range(start, min(start + 500, count)):
                    now = datetime.now(UTC)
                    body = json.dumps(
                        {"message_sid": f"e-{n}", "status": "delivered", "to": "15162065574"}
                    ).encode()
                    raw = callbacks.RawCallback(
                        id=uuid.uuid4(),
                        provider="carrierx",
                        method="POST",
                        path="/callbacks/carrierx",
                        query="",
                        headers=[],
                        body=body,
                        remote_addr=None,
                        received_at=now,
                    )
                    events = [
                        e.stored_raw(str(raw.id))
                        for e in PROVIDER.parse_callback(raw.as_callback_request(), now)
                    ]
                    await callbacks.ingest_callback(
                        connection, raw, outcome="normalised", error=None, events=events
                    )
        await connection.execute("ALTER TABLE events ENABLE TRIGGER events_queue_deliveries")
        for url in sink_urls:
            await connection.execute(
                "INSERT INTO subscriptions (id, url, secret) VALUES ($1, $2, $3)",
                uuid.uuid4(),
                url,
                SECRET,
            )
    finally:
        await connection.close()


async def queue_all(dsn: str) -> None:
    """A delivery of every event to every subscription, at once, and a wake-up."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO deliveries (subscription_id, event_id)"
            " SELECT s.id, e.id FROM subscriptions s, events e"
        )
        await connection.execute("SELECT pg_notify('sms_receiver_events', '')")
    finally:
        await connection.close()


def worker_env(dsn: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": dsn,
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "WEBHOOK_CONCURRENCY": "64",
        "WEBHOOK_PER_SUBSCRIPTION": "32",
        "LOG_LEVEL": "warning",
        "API_AUTH": "false",
        **token_env(),
    }


async def scenario_e(dsn: str, events: int, ports: tuple[int, int]) -> dict[str, Any]:
    """The dispatcher (`sms-receiver worker`) draining `events` x 2 subscribers."""
    sinks = [Sink(), Sink()]
    for sink, port in zip(sinks, ports, strict=True):
        await sink.start(port)
    await seed_events(dsn, events, [sink.url for sink in sinks])
    worker = subprocess.Popen(
        [sys.executable, "-m", "receiver", "worker"],
        env=worker_env(dsn),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    await asyncio.sleep(3)  # the worker is up and idle before the clock starts
    await queue_all(dsn)
    started = time.perf_counter()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if all(len(sink.received) >= events for sink in sinks):
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        for sink in sinks:
            await sink.stop()
    delivered = sum(len(sink.received) for sink in sinks)
    return {
        "deliveries": delivered,
        "rate": delivered / elapsed,
        "check_ok": delivered == 2 * events and not any(s.bad_signatures for s in sinks),
    }


def signed_bodies(events: int, prefix: str) -> list[tuple[str, str, dict[str, str]]]:
    """`events` event bodies (ids `<prefix>_<n>`) as the dispatcher sends them: its JSON and the
    Standard Webhooks headers signed with SECRET."""
    webhook = Webhook(SECRET)
    bodies = []
    for n in range(events):
        event_id = f"{prefix}_{n}"
        body = json.dumps({"id": event_id, "type": "message.status", "status": "delivered"})
        now = datetime.now(UTC)
        headers = {
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhook.sign(event_id, now, body),
            "Content-Type": "application/json",
        }
        bodies.append((event_id, body, headers))
    return bodies


async def scenario_e0(events: int, ports: tuple[int, int]) -> dict[str, Any]:
    """The same signed bodies posted by one aiohttp client, 64 at once, no database."""
    sinks = [Sink(), Sink()]
    for sink, port in zip(sinks, ports, strict=True):
        await sink.start(port)
    bodies = [
        (sink.url, body, headers)
        for _, body, headers in signed_bodies(events, "evt_e0")
        for sink in sinks
    ]
    limit = asyncio.Semaphore(64)
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:

        async def post(url: str, body: str, headers: dict[str, str]) -> None:
            async with limit, session.post(url, data=body.encode(), headers=headers) as answer:
                await answer.read()

        await asyncio.gather(*(post(*item) for item in bodies))
    elapsed = time.perf_counter() - started
    for sink in sinks:
        await sink.stop()
    return {
        "deliveries": len(bodies),
        "rate": len(bodies) / elapsed,
        "check_ok": sum(len(s.received) for s in sinks) == len(bodies),
    }


class OpenLoop:
    """An open-loop HTTP/1.1 generator: each request leaves at its scheduled time whatever the
    answers to earlier ones, on a kept-alive connection that is free (a new one when none is).
    Requests are pre-encoded bytes on asyncio streams: the generator costs a fraction of what
    an HTTP client library would, and leaves the CPU to what is measured."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.statuses: list[int] = []
        self.opened = 0

    async def send(self, request: bytes) -> None:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened += 1
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        self.statuses.append(status)
        self.idle.append((reader, writer))

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


def carrierx_request(port: int, sid: str) -> bytes:
    body = json.dumps(
        {"message_sid": sid, "status": "delivered", "to": "15162065574", "type": "sms"}
    ).encode()
    return (
        f"POST {callback_path('carrierx')} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def wait_ready(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as ready:
                    if ready.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("serve did not start")


async def scenario_f(
    dsn: str,
    rate: float,
    seconds: float,
    serve_port: int,
    sink_port: int,
    filters: dict[str, Any] | None = None,
    prefix: str = "f",
) -> dict[str, Any]:
    """Open loop: callbacks sent at a fixed rate to `serve`, each timed from its sending to its
    arrival at the subscriber, delivered by a `worker` beside it (woken by LISTEN/NOTIFY, as
    another instance would be)."""
    sink = Sink()
    await sink.start(sink_port)
    connection = await asyncpg.connect(dsn)
    subscription = uuid.uuid4()
    await connection.execute(
        "INSERT INTO subscriptions (id, url, secret, filters) VALUES ($1, $2, $3, $4::jsonb)",
        subscription,
        sink.url,
        SECRET,
        json.dumps(filters or {}),
    )
    await connection.close()
    env = worker_env(dsn) | {"DB_POOL_MAX_SIZE": "20"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(serve_port)],
            env=env | {"DISPATCHER": "false"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "receiver", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
    ]
    sent: dict[str, float] = {}
    generator = OpenLoop(serve_port)
    total = int(rate * seconds)
    try:
        await wait_ready(serve_port)
        await asyncio.sleep(2)  # the worker is up and listening

        async def fire(n: int, request: bytes) -> None:
            sent[f"{prefix}-{n}"] = time.perf_counter()
            await generator.send(request)

        requests = [carrierx_request(serve_port, f"{prefix}-{n}") for n in range(total)]
        tasks = []
        start = time.perf_counter()
        for n, request in enumerate(requests):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(n, request)))
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + 30
        while len(sink.received) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        generator.close()
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        await sink.stop()
    # The sink knows event ids; the message sid is inside: map through the database.
    connection = await asyncpg.connect(dsn)
    rows = await connection.fetch(
        "SELECT e.id, e.provider_message_id FROM deliveries d JOIN events e ON e.id = d.event_id"
        " WHERE d.subscription_id = $1",
        subscription,
    )
    await connection.execute("DELETE FROM subscriptions WHERE id = $1", subscription)
    await connection.close()
    by_event = {row["id"]: row["provider_message_id"] for row in rows}
    latencies = sorted(
        (arrived - sent[by_event[event_id]]) * 1000
        for event_id, arrived in sink.received.items()
        if by_event.get(event_id) in sent
    )
    if not latencies:
        return {"rate": rate, "check_ok": False}
    return {
        "rate": rate,
        "sent": len(sent),
        "delivered": len(latencies),
        "connections": generator.opened,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)],
        "check_ok": len(latencies) == len(sent)
        and all(status == 200 for status in generator.statuses),
    }
