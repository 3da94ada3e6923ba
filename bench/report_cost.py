"""`make bench-reports`: the database's time per report that matches a message, and per report
that matches none, in this revision and in another one (`--before REV`, default the last
commit before tenants), measured in the same run, interleaved.

`make bench`'s C sends reports for ids the hub never sent (orphans, as a provider's retries of
unknown ids would be): they are nobody's, so they never touch what a tenant adds to a report of
one of its messages (the tenant read from the recipient row, the tenant's feed index). This
measures that path alone, inside Postgres (no HTTP, no client round trip): N messages with a
recipient each, then the reports stored by `store_events` in batches of 50 in a PL/pgSQL loop,
a commit each, timed with clock_timestamp(). Writes bench/results/reports-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import checkout, drop_database, fresh_database  # noqa: E402

# The commit before the tenants' migration (issue 21).
BEFORE_TENANTS = "da3ef92"

FILL = """
INSERT INTO messages (id, provider, sender, created_at)
SELECT md5('m' || n)::uuid, 'carrierx', '+447700900999', now() FROM generate_series(1, $1) n;
"""
RECIPIENTS = """
INSERT INTO message_recipients (message_id, provider, provider_message_id, recipient, status,
                                final, sequence, segments)
SELECT md5('m' || n)::uuid, 'carrierx', 'cx-' || n, '+44770090' || lpad((n % 10000)::text, 4, '0'),
       'sent', false, 1, 1
FROM generate_series(1, $1) n;
"""
# The reports in batches of 50, one store_events call and one commit each, as the ingest's group
# commit stores callbacks (its batches average 36 at 128 connections); `prefix` 'cx-' for ids
# of the messages above, another for ids nobody sent.
TIMED = """
DO $$
DECLARE
    started timestamptz := clock_timestamp();
BEGIN
    FOR batch IN 0..({count} / 50 - 1) LOOP
        PERFORM * FROM store_events(NULL, (
            SELECT jsonb_agg(jsonb_build_object(
                'id', '{prefix}' || n || '-delivered', 'type', 'message.status',
                'provider', 'carrierx', 'provider_message_id', '{prefix}' || n,
                'recipient', '+44770090' || lpad((n % 10000)::text, 4, '0'),
                'status', 'delivered', 'final', true, 'provider_status', 'delivered',
                'occurred_at', now(), 'received_at', now(), 'occurred_at_source', 'provider',
                'raw_id', gen_random_uuid()))
            FROM generate_series(batch * 50 + 1, batch * 50 + 50) AS n));
        COMMIT;
    END LOOP;
    PERFORM set_config('bench.elapsed_us',
        (extract(epoch FROM clock_timestamp() - started) * 1e6)::bigint::text, false);
END
$$;
"""


async def one(admin: str, name: str, migrations: Path, count: int) -> dict[str, float]:
    """µs per matched and per orphan report in a fresh database of these migrations."""
    dsn = await fresh_database(admin, name, 2, migrations)
    connection = await asyncpg.connect(dsn)
    try:
        tenant_column = await connection.fetchval(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = 'messages' AND column_name = 'tenant'"
        )
        fill = FILL.replace("now() FROM", "now(), 'default' FROM").replace(
            "created_at)", "created_at, tenant)"
        )
        await connection.execute(fill if tenant_column else FILL, count)
        recipients = RECIPIENTS
        if tenant_column:
            recipients = recipients.replace("segments)", "segments, tenant)").replace(
                "'sent', false, 1, 1", "'sent', false, 1, 1, 'default'"
            )
        await connection.execute(recipients, count)
        # A warm-up of reports, then statistics, as autovacuum gives a running hub: plans made
        # on an empty events table would scan it for every report (and grow with it).
        await connection.execute(TIMED.format(count=2000, prefix="warm-"))
        await connection.execute("ANALYZE")
        figures = {}
        for kind, prefix in (("matched", "cx-"), ("orphan", "nobody-")):
            # A session of its own: its plans are made now, on these statistics.
            await connection.close()
            connection = await asyncpg.connect(dsn)
            await connection.execute(TIMED.format(count=count, prefix=prefix))
            elapsed = int(await connection.fetchval("SELECT current_setting('bench.elapsed_us')"))
            figures[kind] = elapsed / count
        matched_tenants = await connection.fetchval(
            "SELECT count(*) FROM events WHERE provider_message_id LIKE 'cx-%'"
            + (" AND tenant = 'default'" if tenant_column else "")
        )
        assert matched_tenants == count, "every matched report stored (with its tenant)"
    finally:
        await connection.close()
        await drop_database(admin, name)
    return figures


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE_TENANTS, metavar="REV")
    parser.add_argument("--reports", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    import pgserver

    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-pg-") as data,
        tempfile.TemporaryDirectory(prefix="bench-before-") as tree,
    ):
        before = checkout(args.before, Path(tree))
        server = pgserver.get_server(Path(data) / "pg", cleanup_mode="stop")
        admin = str(server.get_uri())
        for rep in range(args.reps):  # interleaved: before, after, before, after...
            for label, migrations in (("before", before / "migrations"), ("after", None)):
                figures = await one(
                    admin,
                    f"bench_reports_{label}_{rep}",
                    migrations or ROOT / "migrations",
                    args.reports,
                )
                runs.append({"revision": label, "rep": rep, **figures})
                print(
                    f"  {label} rep {rep + 1}: matched {figures['matched']:.1f} µs/report,"
                    f" orphan {figures['orphan']:.1f} µs/report",
                    flush=True,
                )
        server.cleanup()
    summary = {
        label: {
            kind: statistics.median(r[kind] for r in runs if r["revision"] == label)
            for kind in ("matched", "orphan")
        }
        for label in ("before", "after")
    }
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report = {
        "when": datetime.now(UTC).isoformat(),
        "before": args.before,
        "after": head,
        "reports": args.reports,
        "runs": runs,
        "summary": summary,
    }
    out = ROOT / "bench" / "results" / f"reports-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(report, indent=2))
    for kind in ("matched", "orphan"):
        b, a = summary["before"][kind], summary["after"][kind]
        print(f"{kind:>8}: before {b:.1f} µs/report, after {a:.1f} µs/report ({a / b:.2f}x)")
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
