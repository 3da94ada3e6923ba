"""`make faults`: one fault at a time under a provider-like load, then what was acknowledged is
checked against what was stored and delivered.

A generator sends CarrierX DLRs open loop (a fixed rate, whatever the answers), each with a
provider id of its own, and retries what was not acknowledged (503, a refused or cut connection,
a timeout) for a bounded window, as a provider would; it records every attempt and answer. A
local subscriber records every webhook it receives. While the load runs, one fault is injected.
Afterwards, for every callback answered 2xx: its raw row is stored, its event stored exactly
once, and delivered to the subscriber at least once. Everything runs on loopback, bounded in
time and requests, and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fanout import wait_ready  # noqa: E402
from bench.run import free_port, stop_server  # noqa: E402
from bench.tokens import callback_path, token_env  # noqa: E402
from faults import brokers, failover  # noqa: E402
from receiver.storage.migrate import apply_migrations, migrations_dir  # noqa: E402

RATE = 150.0  # callbacks per second offered, about 30% of what this machine serves end to end
SECONDS = 20.0  # of load
RETRY_WINDOW_S = 40.0  # a provider gives up on a callback after this
DRAIN_S = 40.0  # after the load, for retries and deliveries to finish


@dataclass
class Sent:
    sid: str
    attempts: int = 0
    statuses: list[str] = field(default_factory=list)
    raw_id: str | None = None  # from the 2xx answer
    slowest_s: float = 0.0  # the longest wait for an answer


class Generator:
    """Open loop, with a provider's retries; every attempt and answer recorded."""

    def __init__(self, *ports: int) -> None:
        # Behind a load balancer: callbacks spread over the instances, and a retry goes to the
        # next one (a balancer stops sending to an instance that does not answer).
        self.urls = [f"http://127.0.0.1:{port}{callback_path('carrierx')}" for port in ports]
        self.sent: list[Sent] = []

    async def run(self, rate: float, seconds: float) -> None:
        timeout = aiohttp.ClientTimeout(total=5)
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tasks = []
            start = time.monotonic()
            for n in range(int(rate * seconds)):
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                item = Sent(sid=f"fault-{uuid.uuid4().hex[:12]}-{n}")
                self.sent.append(item)
                tasks.append(asyncio.create_task(self._deliver(session, item, n)))
            await asyncio.gather(*tasks)

    async def _deliver(self, session: aiohttp.ClientSession, item: Sent, n: int) -> None:
        body = {"message_sid": item.sid, "status": "delivered", "to": "15162065574"}
        deadline = time.monotonic() + RETRY_WINDOW_S
        pause = 0.5
        while True:
            item.attempts += 1
            sent_at = time.monotonic()
            url = self.urls[(n + item.attempts - 1) % len(self.urls)]
            try:
                async with session.post(url, json=body) as answer:
                    item.slowest_s = max(item.slowest_s, time.monotonic() - sent_at)
                    item.statuses.append(str(answer.status))
                    if answer.status in (200, 202):
                        item.raw_id = (await answer.json())["raw_id"]
                        return
                    if answer.status < 500 and answer.status != 408:
                        return  # refused for good: a provider does not retry that
            except (aiohttp.ClientError, TimeoutError) as error:
                item.statuses.append(type(error).__name__)
            if time.monotonic() + pause > deadline:
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 4.0)


class Subscriber:
    """Records every webhook-id it receives; answers from `behaviour` (200 by default)."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.behaviour: Callable[[], web.Response] = lambda: web.Response(text="ok")
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.delay_s = 0.0  # before answering (and after recording)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        answer = self.behaviour()
        if answer.status == 200:
            self.received[request.headers["webhook-id"]] += 1
        return answer

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Postgres:
    """The embedded Postgres, which a fault may stop and start again."""

    def __init__(self, data: Path) -> None:
        import pgserver

        self.data = data
        self.server = pgserver.get_server(data, cleanup_mode="stop")
        self.admin = str(self.server.get_uri())
        self.socket_dir = parse_qs(urlsplit(self.admin).query).get("host", [str(data)])[0]

    def stop_immediately(self) -> None:
        self._pg_ctl(["-m", "immediate", "-w", "stop"])

    def start(self) -> None:
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "start"])

    def close(self) -> None:
        """Stops the server, the one a fault started again too (pgserver's own cleanup stops
        only the server it started: a restarted one outlived the run, its directory gone)."""
        try:
            self._pg_ctl(["-m", "fast", "-w", "stop"])
        except Exception as error:  # already stopped
            print(f"  (Postgres stop: {error!r})", flush=True)
        self.server.cleanup()

    def _pg_ctl(self, arguments: list[str]) -> None:
        from pgserver._commands import pg_ctl

        # As the server's own (unprivileged) user, as pgserver runs it.
        pg_ctl(arguments, pgdata=self.data, user=self.server.system_user, timeout=30)


@dataclass
class Hub:
    """`serve` (and, when asked, a separate `worker`), restartable."""

    dsn: str
    port: int
    separate_worker: bool
    spool_dir: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)  # more settings (a broker's)
    serve: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return (
            {
                **os.environ,
                "DATABASE_URL": self.dsn,
                "API_AUTH": "false",
                "LOG_LEVEL": "warning",
                "DISPATCHER": "false" if self.separate_worker else "true",
                "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
                **token_env(),
                "WEBHOOK_RETRY_DELAYS_S": "0.5,1,2,2,2,2,2,2,2,2",
                "WEBHOOK_TIMEOUT_S": "2",
                "WEBHOOK_LEASE_S": "4",
                "WEBHOOK_POLL_S": "0.5",
                "DB_ACQUIRE_TIMEOUT_S": "1",
                "DB_COMMAND_TIMEOUT_S": "5",
                "DB_CONNECT_RETRY_S": "60",
                "SPOOL_REPLAY_S": "1",
            }
            | ({"SPOOL_DIR": str(self.spool_dir)} if self.spool_dir else {})
            | self.extra
        )

    def start_serve(self) -> None:
        self.serve = spawn(["serve", "--port", str(self.port)], self.env())

    def start_worker(self) -> None:
        self.worker = spawn(["worker"], self.env() | {"DISPATCHER": "true"})

    async def ready(self) -> None:
        await wait_ready(self.port)

    def kill(self, process: subprocess.Popen[bytes] | None) -> None:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        for process in (self.serve, self.worker):
            if process is not None and process.poll() is None:
                stop_server(process)


def spawn(arguments: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "receiver", *arguments],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# --- the faults: each runs beside the load, from its start --------------------------------------

Fault = Callable[["Run"], Awaitable[None]]


@dataclass
class Run:
    postgres: Postgres
    hub: Hub
    subscriber: Subscriber
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    others: list[Hub] = field(default_factory=list)  # more instances on the same database


async def no_fault(run: Run) -> None:
    return None


async def app_killed(run: Run) -> None:
    await asyncio.sleep(6)
    run.hub.kill(run.hub.serve)
    run.hub.start_serve()
    started = time.monotonic()
    await run.hub.ready()
    run.notes.append(f"serve SIGKILLed, back in {time.monotonic() - started:.1f} s")


async def postgres_restarted(run: Run) -> None:
    await asyncio.sleep(5)
    run.postgres.stop_immediately()
    stopped = time.monotonic()
    await asyncio.sleep(10)
    run.postgres.start()
    run.notes.append(f"Postgres down {time.monotonic() - stopped:.1f} s")


async def connections_terminated(run: Run) -> None:
    connection = await asyncpg.connect(run.hub.dsn)
    killed = 0
    try:
        for _ in range(12):
            await asyncio.sleep(1)
            killed += await connection.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t"
            )
    finally:
        await connection.close()
    run.notes.append(f"{killed} connections terminated over 12 s")


async def pool_exhausted(run: Run) -> None:
    """Every writer of the hub blocked behind a lock for 8 s, longer than a database call may
    take (5 s here): callbacks must be answered 503 within a bounded time instead of queueing
    without end, and stored once the lock is gone."""
    await asyncio.sleep(5)
    connection = await asyncpg.connect(run.hub.dsn)
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE raw_callbacks IN EXCLUSIVE MODE")
            await asyncio.sleep(8)
    finally:
        await connection.close()
    run.notes.append("raw_callbacks locked for 8 s")


async def dispatcher_killed(run: Run) -> None:
    """The worker killed while deliveries are under way: posted, not yet marked delivered (the
    subscriber takes 0.3 s to answer). They must be delivered again, with the same webhook-id,
    once their leases run out."""
    run.subscriber.delay_s = 0.3
    for _ in range(2):
        await asyncio.sleep(5)
        run.hub.kill(run.hub.worker)
        await asyncio.sleep(1)
        run.hub.start_worker()
    await asyncio.sleep(2)
    run.subscriber.delay_s = 0.0
    run.notes.append("worker SIGKILLed twice with deliveries under way (leases of 4 s)")


async def subscriber_misbehaves(run: Run) -> None:
    """The subscriber answers 500, then 429 with Retry-After, then 302, then too late (after
    the hub stopped waiting), each for 3 s: every event must still reach it."""
    behaviours: list[tuple[str, Callable[[], web.Response]]] = [
        ("500", lambda: web.Response(status=500)),
        ("429", lambda: web.Response(status=429, headers={"Retry-After": "1"})),
        ("302", lambda: web.Response(status=302, headers={"Location": "http://127.0.0.1:1/"})),
    ]
    await asyncio.sleep(3)
    for _name, behaviour in behaviours:
        run.subscriber.behaviour = behaviour
        await asyncio.sleep(3)
    run.subscriber.behaviour = lambda: web.Response(text="ok")
    run.subscriber.delay_s = 3.0  # longer than the hub waits (WEBHOOK_TIMEOUT_S 2)
    await asyncio.sleep(3)
    run.subscriber.delay_s = 0.0
    run.notes.append("subscriber answered 500, 429 (Retry-After 1), 302, then too late, 3 s each")


async def subscriber_gone(run: Run) -> None:
    """A second subscriber answers 410 Gone: its subscription is disabled, and the first one
    still gets every event."""
    gone = Subscriber()
    gone.behaviour = lambda: web.Response(status=410)
    await gone.start()
    try:
        connection = await asyncpg.connect(run.hub.dsn)
        try:
            await connection.execute(
                "INSERT INTO subscriptions (id, url, secret) VALUES ($1, $2, $3)",
                uuid.uuid4(),
                gone.url,
                "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
            )
            await asyncio.sleep(8)
            row = await connection.fetchrow(
                "SELECT enabled, disabled_reason FROM subscriptions WHERE url = $1", gone.url
            )
        finally:
            await connection.close()
    finally:
        await gone.stop()
    disabled = row is not None and not row["enabled"]
    run.notes.append(f"second subscriber answered 410: disabled {disabled}")
    if not disabled:
        run.failures.append("the subscription answered 410 is still enabled")


async def listen_terminated(run: Run) -> None:
    """The LISTEN connections (serve's and the worker's) terminated twice: each instance must
    LISTEN again within seconds (polling covers the gap meanwhile)."""
    listening = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
    )
    connection = await asyncpg.connect(run.hub.dsn)
    try:
        for round_ in range(2):
            await asyncio.sleep(5)
            before = [row["pid"] for row in await connection.fetch(listening)]
            for pid in before:
                await connection.execute("SELECT pg_terminate_backend($1)", pid)
            back_in = None
            started = time.monotonic()
            while time.monotonic() - started < 10:
                now = [row["pid"] for row in await connection.fetch(listening)]
                if len([pid for pid in now if pid not in before]) >= len(before):
                    back_in = time.monotonic() - started
                    break
                await asyncio.sleep(0.1)
            if back_in is None:
                run.failures.append(f"LISTEN not made again within 10 s (round {round_ + 1})")
            else:
                run.notes.append(
                    f"{len(before)} LISTEN connections terminated, back in {back_in:.1f} s"
                )
    finally:
        await connection.close()


async def one_of_two_killed(run: Run) -> None:
    """Two serves and two workers on one Postgres, callbacks spread over both serves: one serve
    and the other instance's worker SIGKILLed mid-run, for good. The generator's retries go to
    the serve left; the worker left takes over the deliveries (the dead one's once their
    leases run out)."""
    run.subscriber.delay_s = 0.1  # deliveries are under way when the worker dies
    await asyncio.sleep(7)
    [second] = run.others
    second.kill(second.serve)
    run.hub.kill(run.hub.worker)
    run.notes.append("serve 2 and worker 1 SIGKILLed at 7 s, not restarted")
    await asyncio.sleep(3)
    run.subscriber.delay_s = 0.0


FAULTS: dict[str, tuple[Fault, bool]] = {  # name: (fault, separate worker)
    "none": (no_fault, False),
    "app SIGKILLed and restarted": (app_killed, False),
    "Postgres stopped (immediate) 10 s": (postgres_restarted, False),
    "Postgres stopped 10 s (spool on)": (postgres_restarted, False),
    "connections terminated every second": (connections_terminated, False),
    "pool exhausted (writers locked 8 s)": (pool_exhausted, False),
    "dispatcher SIGKILLed mid-delivery": (dispatcher_killed, True),
    "subscriber 500 / 429 / 302 / too late": (subscriber_misbehaves, False),
    "a second subscriber answers 410": (subscriber_gone, False),
    "LISTEN connections terminated": (listen_terminated, True),
    "2 serves + 2 workers: one of each killed": (one_of_two_killed, True),
}
# Faults run against two instances (a serve and a worker each) on one database.
TWO_INSTANCES = {"2 serves + 2 workers: one of each killed"}


async def fresh_database(postgres: Postgres, name: str, subscriber_url: str | None) -> str:
    connection = await asyncpg.connect(postgres.admin)
    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await connection.execute(f'CREATE DATABASE "{name}"')
    await connection.close()
    where = urlsplit(postgres.admin)
    dsn = where._replace(path=f"/{name}").geturl()
    connection = await asyncpg.connect(dsn)
    await apply_migrations(connection, migrations_dir())
    if subscriber_url is not None:
        await connection.execute(
            "INSERT INTO subscriptions (id, url, secret) VALUES ($1, $2, $3)",
            uuid.uuid4(),
            subscriber_url,
            "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
        )
    await connection.close()
    return dsn


async def one_fault(postgres: Postgres, name: str, fault: Fault, separate: bool) -> dict[str, Any]:
    subscriber = Subscriber()
    await subscriber.start()
    dsn = await fresh_database(postgres, "faults", subscriber.url)
    spool_dir = Path(tempfile.mkdtemp(prefix="faults-spool-")) if "spool" in name else None
    hub = Hub(dsn, free_port(), separate, spool_dir)
    others = [Hub(dsn, free_port(), separate) for _ in range(name in TWO_INSTANCES)]
    for instance in (hub, *others):
        instance.start_serve()
        if separate:
            instance.start_worker()
    run = Run(postgres, hub, subscriber, others=others)
    generator = Generator(*(instance.port for instance in (hub, *others)))
    started = time.monotonic()
    try:
        for instance in (hub, *others):
            await instance.ready()
        await asyncio.gather(generator.run(RATE, SECONDS), fault(run))
        acknowledged = {s.sid for s in generator.sent if s.raw_id}
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            if len(subscriber.received) >= len(acknowledged) and await all_settled(dsn):
                break
            await asyncio.sleep(0.5)
    finally:
        for instance in (hub, *others):
            instance.stop()
        await subscriber.stop()
    return await verdict(name, dsn, generator, subscriber, run, time.monotonic() - started)


async def broker_load(
    dsn: str, extra: dict[str, str], fault: Callable[[list[str]], Awaitable[None]]
) -> set[str]:
    """The load against one serve (with its dispatcher) whose settings name a broker, beside
    `fault`; then until every delivery settled. Returns the acknowledged callbacks' ids."""
    hub = Hub(dsn, free_port(), False, extra=extra)
    hub.start_serve()
    generator = Generator(hub.port)
    try:
        await hub.ready()
        await asyncio.gather(generator.run(RATE, SECONDS), fault([]))
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and not await all_settled(dsn):
            await asyncio.sleep(0.5)
    finally:
        hub.stop()
    return {s.sid for s in generator.sent if s.raw_id}


async def all_settled(dsn: str) -> bool:
    try:
        connection = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        pending = await connection.fetchval(
            "SELECT count(*) FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
            " WHERE s.enabled AND d.status IN ('pending', 'delivering')"
        )
        return bool(pending == 0)
    finally:
        await connection.close()


async def verdict(
    name: str, dsn: str, generator: Generator, subscriber: Subscriber, run: Run, elapsed: float
) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        events = await connection.fetch(
            "SELECT id, provider_message_id FROM events WHERE provider = 'carrierx'"
        )
        raw_ids = {str(row["id"]) for row in await connection.fetch("SELECT id FROM raw_callbacks")}
        undelivered = await connection.fetchval(
            "SELECT count(*) FROM deliveries WHERE status <> 'delivered'"
        )
    finally:
        await connection.close()
    acknowledged = [s for s in generator.sent if s.raw_id]
    per_sid = Counter(row["provider_message_id"] for row in events)
    event_of = {row["provider_message_id"]: row["id"] for row in events}
    lost = [s for s in acknowledged if per_sid[s.sid] == 0 or s.raw_id not in raw_ids]
    duplicate_events = sum(n - 1 for n in per_sid.values() if n > 1)
    not_delivered = [s for s in acknowledged if subscriber.received[event_of.get(s.sid, "")] == 0]
    answers = Counter(status for s in generator.sent for status in s.statuses)
    result = {
        "fault": name,
        "callbacks": len(generator.sent),
        "requests": sum(s.attempts for s in generator.sent),
        "acknowledged": len(acknowledged),
        "stored": sum(1 for s in acknowledged if per_sid[s.sid] == 1),
        "lost": len(lost),
        "duplicate_events": duplicate_events,
        "not_delivered": len(not_delivered),
        "duplicates_delivered": sum(n - 1 for n in subscriber.received.values() if n > 1),
        "deliveries_left": undelivered,
        "gave_up": len(generator.sent) - len(acknowledged),
        "slowest_answer_s": round(max((s.slowest_s for s in generator.sent), default=0.0), 1),
        "answers": dict(answers.most_common()),
        "notes": run.notes,
        "elapsed_s": round(elapsed, 1),
    }
    result["failures"] = run.failures
    result["ok"] = (
        not run.failures
        and result["lost"] == 0
        and result["duplicate_events"] == 0
        and result["not_delivered"] == 0
        and result["gave_up"] == 0
    )
    return result


def table(results: list[dict[str, Any]]) -> str:
    header = (
        f"{'fault':<38}{'requests':>9}{'acked':>7}{'stored':>7}{'lost':>5}{'dup ev':>7}"
        f"{'undeliv':>8}{'dup dlv':>8}  check"
    )
    lines = [header]
    for r in results:
        lines.append(
            f"{r['fault']:<38}{r['requests']:>9}{r['acknowledged']:>7}{r['stored']:>7}"
            f"{r['lost']:>5}{r['duplicate_events']:>7}{r['not_delivered']:>8}"
            f"{r['duplicates_delivered']:>8}  {'ok' if r['ok'] else 'FAILED'}"
        )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma separated fault names (default: all)")
    args = parser.parse_args()
    chosen = [n for n in FAULTS if not args.only or n in args.only.split(",")]
    sends = not args.only or "provider_down_during_sends" in args.only.split(",")
    kinds = [k for k in ("jetstream", "rabbitmq") if not args.only or k in args.only.split(",")]
    results = []
    others = []
    with tempfile.TemporaryDirectory(prefix="faults-pg-") as data:
        postgres = Postgres(Path(data) / "pg")
        try:
            for name in chosen:
                fault, separate = FAULTS[name]
                result = await one_fault(postgres, name, fault, separate)
                results.append(result)
                print(f"  {name}: {json.dumps(result)}", flush=True)
            if sends:
                dsn = await fresh_database(postgres, "faults_sends", "http://127.0.0.1:9/x")
                others.append(await failover.scenario(dsn, spawn))
                print(f"  {json.dumps(others[-1])}", flush=True)
            for kind in kinds:

                async def database(name: str) -> str:
                    return await fresh_database(postgres, name, None)

                others.append(await brokers.scenario(kind, database, broker_load))
                print(f"  {json.dumps(others[-1])}", flush=True)
        finally:
            postgres.close()
    print(table(results))
    for result in others:
        print(brokers.line(result) if "on_the_broker" in result else failover.line(result))
    out = ROOT / "faults" / "results.json"
    out.write_text(json.dumps(results + others, indent=2))
    print(f"written {out.relative_to(ROOT)}")
    return 0 if all(r["ok"] for r in results + others) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
