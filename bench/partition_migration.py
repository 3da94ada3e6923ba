"""How long migration 0016 (time partitions) locks tables that already hold millions of rows.

Migrates a fresh embedded database to the schema before 0016, fills events, raw_callbacks and
delivery_attempts with generated rows (in SQL), then applies 0016 and times it: the migration
holds an exclusive lock on the three tables from start to end, so its duration is how long
callbacks would wait (they are spooled meanwhile, if SPOOL_DIR is set). Prints one JSON line.

    python bench/partition_migration.py --rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from receiver.storage.migrate import apply_migrations, load_migrations, migrations_dir  # noqa: E402

FILL = """
INSERT INTO subscriptions (id, url, secret)
VALUES ('00000000-0000-0000-0000-00000000000a', 'http://127.0.0.1:9/x', 's')
ON CONFLICT DO NOTHING;

INSERT INTO raw_callbacks (id, provider, method, path, query, headers, body, remote_addr,
                           received_at, outcome, event_count)
SELECT md5('raw' || n)::uuid, 'carrierx', 'POST', '/callbacks/carrierx/t', '',
       '{"content-type": "application/json"}', convert_to(repeat('x', 300), 'UTF8'),
       '127.0.0.1', now() - make_interval(secs => n), 'normalised', 1
FROM generate_series(1, $1) AS n;

INSERT INTO events (id, type, provider, provider_message_id, recipient, status, final,
                    provider_status, occurred_at, received_at, raw_id, occurred_at_source,
                    stored_at, recipient_id, sequence, recipient_status)
SELECT 'ev-' || n, 'message.status', 'carrierx', 'pm-' || n, '+4477009' || lpad(n::text, 5, '0'),
       'delivered', true, 'delivered', now() - make_interval(secs => n),
       now() - make_interval(secs => n), md5('raw' || n)::uuid, 'provider',
       now() - make_interval(secs => n), NULL, 1, 'delivered'
FROM generate_series(1, $1) AS n;

INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms)
SELECT d.id, 1, d.created_at, 200, 3.5 FROM deliveries d WHERE d.id <= $1;
"""


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in each of the three")
    args = parser.parse_args()
    import pgserver

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as data:
        server = pgserver.get_server(Path(data) / "pg", cleanup_mode="stop")
        dsn = str(server.get_uri())
        earlier = Path(data) / "before-0016"
        earlier.mkdir()
        later = [m for m in load_migrations(migrations_dir()) if m.version >= 16]
        for migration in load_migrations(migrations_dir()):
            if migration.version < 16:
                (earlier / f"{migration.name}.sql").write_text(migration.sql)
        connection = await asyncpg.connect(dsn)
        try:
            await apply_migrations(connection, earlier)
            started = time.monotonic()
            for statement in FILL.split(";\n"):
                if "$1" in statement:
                    await connection.execute(statement, args.rows)
                elif statement.strip():
                    await connection.execute(statement)
            await connection.execute("VACUUM ANALYZE")
            filled_s = time.monotonic() - started
            size = await connection.fetchval("SELECT pg_database_size(current_database())")
            for migration in later:
                shutil.copy(migrations_dir() / f"{migration.name}.sql", earlier)
            started = time.monotonic()
            await apply_migrations(connection, earlier)
            locked_s = time.monotonic() - started
            kept = await connection.fetchval(
                "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM raw_callbacks)"
                " + (SELECT count(*) FROM delivery_attempts)"
            )
        finally:
            await connection.close()
        server.cleanup()
    print(
        json.dumps(
            {
                "rows_each": args.rows,
                "database_mib": round(size / 2**20),
                "fill_s": round(filled_s, 1),
                "migration_0016_locked_s": round(locked_s, 2),
                "rows_kept": kept == 3 * args.rows,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
