"""`make bench-console`: how fast the console's pages answer with 100,000 messages stored.

Fills a fresh database in SQL (as `make bench-growth` does, at a tenth of its size: 100,000
messages, 200,000 recipients, 400,000 events and raw callbacks over three months), adds some
unreadable callbacks and a subscription with failed deliveries, starts `serve`, then asks each
page one at a time (an operator clicking, not a load) and prints p50/p99 (goal: under 100 ms).
Writes bench/results/console-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.growth import fill  # noqa: E402
from bench.run import free_port, fresh_database, start_server, stop_server  # noqa: E402

GOAL_MS = 100.0

EXTRAS = [
    # unreadable callbacks, for the Callbacks page
    """
    INSERT INTO raw_callbacks (id, provider, method, path, body, received_at, outcome, error)
    SELECT gen_random_uuid(), 'swift', 'POST', '/callbacks/swift', convert_to('junk', 'UTF8'),
           now() - make_interval(mins => n), 'unparsed', 'not JSON'
    FROM generate_series(1, 500) AS n
    """,
    # a subscription with deliveries given up on and attempts, for the Subscriptions page
    """
    INSERT INTO subscriptions (id, url, secret)
    VALUES ('00000000-0000-0000-0000-0000000000c1', 'http://127.0.0.1:9/hook', 's')
    """,
    """
    INSERT INTO deliveries (subscription_id, event_id, status, attempts, last_status, last_error,
                            created_at, updated_at)
    SELECT '00000000-0000-0000-0000-0000000000c1', 'gev-' || n,
           CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'delivered' END, 3, 500, 'server error',
           now() - make_interval(mins => n), now() - make_interval(mins => n)
    FROM generate_series(1, 20000) AS n
    """,
    """
    INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms)
    SELECT d.id, 1, d.created_at, CASE WHEN d.status = 'failed' THEN 500 ELSE 200 END, 12
    FROM deliveries d
    """,
    "ANALYZE",
]


async def time_pages(port: int, message_id: str, raw_id: str, samples: int) -> dict[str, Any]:
    pages = {
        "messages (newest)": "/console",
        "messages by number": "/console?to=%2B447700900001",
        "messages by status": "/console?status=delivered",
        "a message": f"/console/messages/{message_id}",
        "a raw callback": f"/console/raw-callbacks/{raw_id}",
        "callbacks": "/console/callbacks",
        "subscriptions": "/console/subscriptions",
        "providers": "/console/providers",
    }
    result: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for name, path in pages.items():
            timings = []
            for _ in range(samples):
                started = time.perf_counter()
                async with session.get(f"http://127.0.0.1:{port}{path}") as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"{path}: {answer.status}")
                timings.append((time.perf_counter() - started) * 1000)
            first = timings[0]
            timings.sort()
            result[name] = {
                "path": path,
                "first_ms": round(first, 1),
                "p50_ms": round(statistics.median(timings), 1),
                "p99_ms": round(timings[int(0.99 * (len(timings) - 1))], 1),
            }
    return result


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50, help="requests of each page")
    args = parser.parse_args()
    import pgserver

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as data:
        server = pgserver.get_server(Path(data) / "pg", cleanup_mode="stop")
        admin = str(server.get_uri())
        dsn = await fresh_database(admin, "bench_console", 0)
        filled = await fill(dsn, 4 * args.messages, 4 * args.messages)
        connection = await asyncpg.connect(dsn)
        try:
            for statement in EXTRAS:
                await connection.execute(statement)
            message_id = str(
                await connection.fetchval("SELECT id FROM messages ORDER BY created_at DESC")
            )
            raw_id = str(await connection.fetchval("SELECT id FROM raw_callbacks LIMIT 1"))
        finally:
            await connection.close()
        port = free_port()
        process = start_server(dsn, port)
        try:
            pages = await time_pages(port, message_id, raw_id, args.samples)
        finally:
            stop_server(process)
        server.cleanup()
    report = {
        "when": datetime.now(UTC).isoformat(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "filled": {k: int(v) for k, v in filled.items() if k != "fill_s"},
        "pages": pages,
    }
    out = ROOT / "bench" / "results" / f"console-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{filled['messages']:,} messages, {filled['recipients']:,} recipients stored")
    ok = True
    for name, timing in pages.items():
        passed = timing["p99_ms"] <= GOAL_MS
        ok = ok and passed
        print(
            f"{name:<22} first {timing['first_ms']:>6} ms  p50 {timing['p50_ms']:>6} ms"
            f"  p99 {timing['p99_ms']:>6} ms"
            f"  {'PASS' if passed else 'FAIL'} (goal p99 <= {GOAL_MS:g} ms)"
        )
    print(f"written {out.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
