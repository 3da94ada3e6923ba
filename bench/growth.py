"""`make bench-growth`: the callback path and the status query as the data grows.

In one run, on this machine:
  C  `make bench`'s C load (128 connections) against an empty database;
  G  the same load against a database that already holds 10 million events, 5 million
     recipients (2.5 million messages) and 10 million raw callbacks, spread over three months
     of partitions and filled in SQL (minutes, not hours).
At that size it also times the status query (`GET /v1/messages/{id}` and
`/v1/messages/by-provider-id/...`, p50/p99 over random ids), dropping a month of partitions
(the oldest month of events, and a month of daily raw-callback partitions) and reports the
database's size. Prints G/C (goal >= 0.8) and the query p99s (goal <= 10 ms); writes
bench/results/growth-<time>.json. With `--before REV` (BENCH_BEFORE=REV) the status query is also
timed on that revision's code against the same filled database, the two in turn (twice each):
what a change does to the query, on the same data and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import (  # noqa: E402
    checkout,
    drop_database,
    free_port,
    fresh_database,
    load,
    one_run,
    start_server,
    stop_server,
)

CONNECTIONS = 128
SUBSCRIBERS = 2
GOAL_G_OVER_C = 0.8
GOAL_QUERY_P99_MS = 10.0

# The fill: rows spread over the 90 days before now (raw callbacks over the last 30, their
# retention), two recipients a message, two events (sent, delivered) a recipient, each event
# pointing at a raw callback. The empty legacy partitions of a new database are dropped first
# so that the past has partitions of its own, as a hub running for months would.
FILL = [
    "DROP TABLE events_legacy, raw_callbacks_legacy, delivery_attempts_legacy",
    "SELECT create_partitions(t, now() - interval '95 days', now() + interval '7 days')"
    " FROM unnest(ARRAY['events', 'raw_callbacks', 'delivery_attempts']) AS t",
    """
    INSERT INTO messages (id, provider, provider_message_id, sender, body, client_ref,
                          segments, encoding, created_at, request, tenant)
    SELECT md5('m' || n)::uuid, 'carrierx', NULL, '+447700900999', 'Your code is ' || n,
           'ref-' || n, 1, 'GSM-7', now() - make_interval(secs => (n * 3.1)::int % 7776000),
           jsonb_build_object('to', jsonb_build_array('+4477009' || lpad((2 * n % 99991)::text,
               5, '0'), '+4477009' || lpad(((2 * n + 1) % 99991)::text, 5, '0'))), 'default'
    FROM generate_series(1, $1) AS n
    """,
    """
    INSERT INTO message_recipients (message_id, provider, provider_message_id, recipient,
                                    status, final, sequence, segments, updated_at, country,
                                    tenant)
    SELECT md5('m' || (n + 1) / 2)::uuid, 'carrierx', 'g-' || n,
           '+4477009' || lpad((n % 99991)::text, 5, '0'), 'delivered', true, 2, 1,
           now() - make_interval(secs => (((n + 1) / 2) * 3.1)::int % 7776000), 'GB', 'default'
    FROM generate_series(1, $1) AS n
    """,
    """
    INSERT INTO raw_callbacks (id, provider, method, path, query, headers, body, remote_addr,
                               received_at, outcome, event_count)
    SELECT md5('r' || n)::uuid, 'carrierx', 'POST', '/callbacks/carrierx/t', '',
           '{"content-type": "application/json"}',
           convert_to('{"sid": "g-' || n || '", "status": "delivered", "to": "+447700900001"}',
                      'UTF8'),
           '127.0.0.1', now() - make_interval(secs => (n * 0.25)::int % 2592000),
           'normalised', 1
    FROM generate_series(1, $1) AS n
    """,
    """
    INSERT INTO events (id, type, provider, message_id, recipient_id, provider_message_id,
                        recipient, status, final, provider_status, occurred_at, received_at,
                        raw_id, sequence, recipient_status, occurred_at_source, stored_at,
                        tenant)
    SELECT 'gev-' || n, 'message.status', 'carrierx', md5('m' || (r.id + 1) / 2)::uuid, r.id,
           'g-' || r.id, '+4477009' || lpad((r.id % 99991)::text, 5, '0'),
           CASE WHEN n % 2 = 0 THEN 'delivered' ELSE 'sent' END, n % 2 = 0,
           CASE WHEN n % 2 = 0 THEN 'delivered' ELSE 'sent' END, at, at,
           md5('r' || n)::uuid, 1 + n % 2, CASE WHEN n % 2 = 0 THEN 'delivered' ELSE 'sent' END,
           'provider', at, 'default'
    FROM generate_series(1, $1) AS n,
         LATERAL (SELECT (n + 1) / 2 AS id) AS r,
         LATERAL (SELECT now() - make_interval(secs => (((r.id + 1) / 2) * 3.1)::int % 7776000)
                  AS at) AS t
    """,
    "VACUUM ANALYZE",
]


async def fill(dsn: str, events: int, raw: int) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    started = time.monotonic()
    try:
        await connection.execute("SET synchronous_commit = off")
        recipients = events // 2  # two events (sent, delivered) a recipient
        rows = {
            "INTO messages": recipients // 2,  # two recipients a message
            "INTO message_recipients": recipients,
            "INTO raw_callbacks": raw,
            "INTO events": events,
        }
        for statement in FILL:
            count = [n for marker, n in rows.items() if marker in statement]
            await connection.execute(statement, *count)
            what = next((m for m in rows if m in statement), statement.split()[0])
            print(f"  {what}: done at {time.monotonic() - started:.0f} s", flush=True)
        counts = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM events) AS events,"
            " (SELECT count(*) FROM message_recipients) AS recipients,"
            " (SELECT count(*) FROM messages) AS messages,"
            " (SELECT count(*) FROM raw_callbacks) AS raw_callbacks,"
            " pg_database_size(current_database()) AS bytes"
        )
        assert counts is not None
        for _ in range(SUBSCRIBERS):
            await connection.execute(
                "INSERT INTO subscriptions (id, url, secret)"
                " VALUES (gen_random_uuid(), 'http://127.0.0.1:9/x', 's')"
            )
    finally:
        await connection.close()
    return {**dict(counts), "fill_s": round(time.monotonic() - started, 1)}


async def query_latencies(port: int, messages: int, samples: int) -> dict[str, Any]:
    """p50/p99 of the status query by message id and by provider id, random stored ids, one
    request at a time (a person or a support tool asking, not a load)."""
    rng = random.Random(7)  # noqa: S311 (which ids to ask for, nothing secret)
    timings: dict[str, list[float]] = {"by_message_id": [], "by_provider_id": []}
    async with aiohttp.ClientSession() as session:
        for _ in range(samples):
            n = rng.randint(1, messages)
            for kind, path in (
                ("by_message_id", f"/v1/messages/{await _md5_uuid('m', n)}"),
                ("by_provider_id", f"/v1/messages/by-provider-id/carrierx/g-{2 * n}"),
            ):
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}{path}") as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"{path}: {answer.status}")
                timings[kind].append((time.perf_counter() - started) * 1000)
    result: dict[str, Any] = {}
    for kind, values in timings.items():
        values.sort()
        result[kind] = {
            "p50_ms": round(statistics.median(values), 2),
            "p99_ms": round(values[int(0.99 * (len(values) - 1))], 2),
            "samples": len(values),
        }
    return result


async def status_query(dsn: str, messages: int, samples: int, root: Path) -> dict[str, Any]:
    """The status query's latencies on a `serve` of the code under `root`."""
    port = free_port()
    process = start_server(dsn, port, root)
    try:
        return await query_latencies(port, messages, samples)
    finally:
        stop_server(process)


async def _md5_uuid(prefix: str, n: int) -> str:
    """The id the fill gave row n (md5(prefix || n)::uuid in SQL)."""
    digest = hashlib.md5(f"{prefix}{n}".encode(), usedforsecurity=False).hexdigest()
    return str(uuid.UUID(digest))


async def drop_a_month(dsn: str) -> dict[str, Any]:
    """Drops the fullest month of events before this one (one partition) and every daily
    partition of raw callbacks before today (a month of them), as retention does; timed."""
    from receiver.storage.retention import drop_partitions

    connection = await asyncpg.connect(dsn)
    try:
        month = await connection.fetchrow(
            "SELECT p.name, greatest(c.reltuples, 0)::bigint AS rows"
            " FROM table_partitions('events') p JOIN pg_class c ON c.relname = p.name"
            " WHERE p.ends <= date_trunc('month', now()) ORDER BY c.reltuples DESC LIMIT 1"
        )
        assert month is not None
        size_before = await connection.fetchval("SELECT pg_database_size(current_database())")
        started = time.monotonic()
        async with connection.transaction():
            await connection.execute("SET LOCAL lock_timeout = '5s'")
            await connection.execute("SELECT drop_partition('events', $1)", month["name"])
        events_s = time.monotonic() - started
        started = time.monotonic()
        raw = await drop_partitions(
            connection,
            "raw_callbacks",
            await connection.fetchval("SELECT date_trunc('day', now())"),
        )
        raw_s = time.monotonic() - started
        size_after = await connection.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await connection.close()
    return {
        "events_partition": month["name"],
        "events_rows": month["rows"],
        "events_drop_s": round(events_s, 3),
        "raw_partitions": len(raw),
        "raw_rows": sum(d.estimated_rows for d in raw),
        "raw_drop_s": round(raw_s, 3),
        "database_gib_before": round(size_before / 2**30, 2),
        "database_gib_after": round(size_after / 2**30, 2),
    }


async def g_run(dsn: str, data_dir: Path, seconds: float, warmup: float) -> dict[str, Any]:
    warm, run, measured = await load(dsn, data_dir, "/", CONNECTIONS, seconds, warmup, False, True)
    return {
        "rps": run["rps"],
        "p99_ms": run["p99_us"] / 1000,
        "non_2xx": run["errors_status"] + warm["errors_status"],
        **measured,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--raw", type=int, default=10_000_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=500, help="status queries of each kind")
    parser.add_argument("--reps", type=int, default=2, help="runs of C and of G, in turn")
    parser.add_argument("--before", metavar="REV", help="also time the status query on REV")
    args = parser.parse_args()
    import pgserver

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as data:
        data_dir = Path(data) / "pg"
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
        admin = str(server.get_uri())
        c_runs: list[dict[str, Any]] = []
        g_runs: list[dict[str, Any]] = []

        async def empty_run() -> None:
            run = await one_run(
                admin, data_dir, "C", CONNECTIONS, len(c_runs), args.seconds, args.warmup
            )
            c_runs.append(run)
            print(f"  C: {run['rps']:.0f} rps, check {run['check']['ok']}", flush=True)

        print("C: the load against an empty database", flush=True)
        await empty_run()
        print(f"filling: {args.events:,} events, {args.raw:,} raw callbacks", flush=True)
        dsn = await fresh_database(admin, "bench_growth", 0)
        filled = await fill(dsn, args.events, args.raw)
        print(f"  filled in {filled['fill_s']} s: {filled}", flush=True)
        queries = await status_query(dsn, filled["messages"], args.samples, ROOT)
        print(f"  status query: {queries}", flush=True)
        compared: dict[str, Any] = {}
        if args.before:
            with tempfile.TemporaryDirectory(prefix="bench-before-") as tree:
                before = checkout(args.before, Path(tree))
                for rep in range(2):  # before, now, before, now: both meet the same machine
                    for label, root in ((args.before, before), ("now", ROOT)):
                        timed = await status_query(dsn, filled["messages"], args.samples, root)
                        compared.setdefault(label, []).append(timed)
                        print(f"  status query ({label}, {rep + 1}): {timed}", flush=True)
        for rep in range(args.reps):  # G and C in turn, so that both meet the same machine
            print("G: the same load against the filled database", flush=True)
            g_runs.append(await g_run(dsn, data_dir, args.seconds, args.warmup))
            print(f"  G: {g_runs[-1]['rps']:.0f} rps", flush=True)
            if rep + 1 < args.reps:
                await empty_run()
        c = {
            key: statistics.median(run[key] for run in c_runs)
            for key in ("rps", "p99_ms", "cpu_ms_per_request", "db_cpu_ms_per_request")
        } | {"check": {"ok": all(run["check"]["ok"] for run in c_runs)}}
        g = {key: statistics.median(run[key] for run in g_runs) for key in g_runs[0]}
        dropped = await drop_a_month(dsn)
        await drop_database(admin, "bench_growth")
        server.cleanup()
    report = {
        "when": datetime.now(UTC).isoformat(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "connections": CONNECTIONS,
        "C": c,
        "G": g,
        "runs": {"C": [r["rps"] for r in c_runs], "G": [r["rps"] for r in g_runs]},
        "G_over_C": g["rps"] / c["rps"],
        "filled": {**filled, "bytes": int(filled["bytes"])},
        "status_query": queries,
        "status_query_compared": compared,
        "drop_a_month": dropped,
    }
    out = ROOT / "bench" / "results" / f"growth-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    ok_ratio = report["G_over_C"] >= GOAL_G_OVER_C
    ok_queries = all(q["p99_ms"] <= GOAL_QUERY_P99_MS for q in queries.values())
    print(
        f"\nC (empty) {c['rps']:.0f}/s, G ({filled['events']:,} events,"
        f" {filled['recipients']:,} recipients, {filled['raw_callbacks']:,} raw callbacks,"
        f" {filled['bytes'] / 2**30:.1f} GiB) {g['rps']:.0f}/s:"
        f" G/C = {report['G_over_C']:.2f} {'PASS' if ok_ratio else 'FAIL'} (goal >= 0.8)"
    )
    for kind, q in queries.items():
        print(
            f"status query {kind}: p50 {q['p50_ms']} ms, p99 {q['p99_ms']} ms"
            f" {'PASS' if q['p99_ms'] <= GOAL_QUERY_P99_MS else 'FAIL'} (goal p99 <= 10 ms)"
        )
    for label, timings in compared.items():
        for kind in ("by_message_id", "by_provider_id"):
            p99s = ", ".join(f"{t[kind]['p99_ms']}" for t in timings)
            p50s = ", ".join(f"{t[kind]['p50_ms']}" for t in timings)
            print(f"status query {kind} on {label}: p50 {p50s} ms, p99 {p99s} ms")
    print(
        f"dropping a month: events {dropped['events_partition']}"
        f" (~{dropped['events_rows']:,} rows) in {dropped['events_drop_s']} s, raw callbacks"
        f" {dropped['raw_partitions']} partitions (~{dropped['raw_rows']:,} rows) in"
        f" {dropped['raw_drop_s']} s; database {dropped['database_gib_before']} GiB ->"
        f" {dropped['database_gib_after']} GiB"
    )
    print(f"written {out.relative_to(ROOT)}")
    return 0 if ok_ratio and ok_queries and c["check"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
