"""bench-reprocess: correction runs over stored raw callbacks, and what one costs live callbacks.

It fills a database of its own with `--messages` apicontrol messages' reports (each a `sent` and
a `delivered` callback, stored through the real normaliser and store_events: 2 x --messages raw
callbacks), then measures, in raw callbacks per second:
  R0  a dry run that finds nothing to change (today's normaliser: reading and comparing only);
  R1  a dry run with apicontrol's "delivered" remapped to `sent` (half the callbacks change:
      each batch done and rolled back);
  R2  the apply of that remap;
and then F (callback to subscriber, open loop at 25% of C's rate, C measured first) twice: alone,
and beside an apply that corrects the whole window back (R3). F's p99 beside the apply must stay
within `make bench`'s floor for F (100 ms at 25% of C on these 2 shared cores).
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import fanout  # noqa: E402
from bench.run import FLOORS, drop_database, free_port, fresh_database, one_run  # noqa: E402
from normalizers.registry import DEFAULT_REGISTRY  # noqa: E402
from receiver.judgement import judge  # noqa: E402
from receiver.storage.callbacks import CallbackToStore, RawCallback, ingest_callbacks  # noqa: E402
from receiver.storage.ids import time_ordered_uuid  # noqa: E402

RESULTS = ROOT / "bench" / "results"
F_SHARE = 0.25
F_FLOOR_MS = FLOORS["F p99 ms at 25% of C"]


def apicontrol_raw(message: int, word: str, at: datetime) -> RawCallback:
    body = {
        "tstamp": at.isoformat(),
        "message_type": "sms",
        "messageID": 700_000_000 + message,
        "statuses": {f"4477009{message % 100_000:05d}": word},
        "callback_type": "per_recipient_final" if word == "delivered" else "per_recipient_sent",
    }
    return RawCallback(
        id=time_ordered_uuid(),
        provider="apicontrol",
        method="POST",
        path="/callbacks/apicontrol",
        query="",
        headers=[("Content-Type", "application/json")],
        body=json.dumps(body).encode(),
        remote_addr="127.0.0.1",
        received_at=at,
    )


async def fill(dsn: str, messages: int) -> float:
    """Every message's two reports stored as the callback route stores them, 200 a transaction.
    Returns the seconds it took."""
    started = time.monotonic()
    connection = await asyncpg.connect(dsn)
    base = datetime.now(UTC) - timedelta(hours=1)
    batch: list[CallbackToStore] = []
    for message in range(messages):
        for step, word in enumerate(("sent", "delivered")):
            raw = apicontrol_raw(message, word, base + timedelta(milliseconds=2 * message + step))
            judged = judge(DEFAULT_REGISTRY, raw)
            batch.append(
                CallbackToStore(raw, judged.outcome, judged.error, judged.events, judged.normalizer)
            )
        if len(batch) >= 200:
            async with connection.transaction():
                await ingest_callbacks(connection, batch)
            batch = []
    if batch:
        async with connection.transaction():
            await ingest_callbacks(connection, batch)
    await connection.execute("VACUUM ANALYZE")
    await connection.close()
    return time.monotonic() - started


def reprocess(dsn: str, mode: str, remap: bool, report: Path) -> subprocess.Popen[bytes]:
    """`sms-receiver reprocess --all` in a process of its own (as an operator runs it), with
    apicontrol's "delivered" remapped to `sent` when `remap`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.remapped",
            "remap" if remap else "as-is",
            "reprocess",
            "--all",
            f"--{mode}",
            "--provider",
            "apicontrol",
            "--report",
            str(report),
        ],
        env={**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": str(ROOT), "LOG_LEVEL": "warning"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def timed_run(dsn: str, mode: str, remap: bool, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    process = reprocess(dsn, mode, remap, workdir / f"{mode}-{remap}.jsonl")
    output, _ = await asyncio.to_thread(process.communicate, None, 1800)
    seconds = time.monotonic() - started
    lines = output.decode().splitlines()
    run = await latest_run(dsn)
    return {
        "mode": mode,
        "remap": remap,
        "seconds": seconds,
        "examined": run["examined"],
        "rate": run["examined"] / seconds,
        "counts": run["counts"],
        "exit": process.returncode,
        "summary": lines[-4:],
    }


async def latest_run(dsn: str) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    row = await connection.fetchrow(
        "SELECT examined, counts::text, state FROM correction_runs ORDER BY started_at DESC LIMIT 1"
    )
    await connection.close()
    assert row is not None
    return {"examined": row["examined"], "counts": json.loads(row["counts"]), "state": row["state"]}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="2 raw callbacks each")
    parser.add_argument("--seconds", type=float, default=15.0, help="each F run")
    args = parser.parse_args()

    import pgserver

    results: dict[str, Any] = {"messages": args.messages, "raw_callbacks": 2 * args.messages}
    with tempfile.TemporaryDirectory(prefix="bench-reprocess-") as work:
        workdir = Path(work)
        server = pgserver.get_server(workdir / "pg", cleanup_mode="stop")
        admin = str(server.get_uri())
        try:
            c = await one_run(admin, workdir / "pg", "C", 32, 0, 8.0, 2.0)
            results["C_rps"] = c["rps"]
            print(f"  C@32: {c['rps']:.0f} callbacks/s", flush=True)

            dsn = await fresh_database(admin, "bench_reprocess", 0)
            results["fill_s"] = await fill(dsn, args.messages)
            print(
                f"  filled {2 * args.messages:,} raw callbacks in {results['fill_s']:.0f} s",
                flush=True,
            )
            for name, mode, remap in (
                ("R0", "dry-run", False),
                ("R1", "dry-run", True),
                ("R2", "apply", True),
            ):
                results[name] = await timed_run(dsn, mode, remap, workdir)
                print(f"  {name}: {results[name]}", flush=True)

            rate = F_SHARE * results["C_rps"]
            carrierx_only = {"providers": ["carrierx"]}
            alone = await fanout.scenario_f(
                dsn, rate, args.seconds, free_port(), free_port(), carrierx_only
            )
            results["F_alone"] = alone
            print(f"  F alone at {rate:.0f}/s: {alone}", flush=True)

            started = time.monotonic()
            beside = reprocess(dsn, "apply", False, workdir / "apply-back.jsonl")
            await asyncio.sleep(2)  # the run has begun its batches
            during = await fanout.scenario_f(
                dsn, rate, args.seconds, free_port(), free_port(), carrierx_only, "f2"
            )
            running_during = beside.poll() is None
            await asyncio.to_thread(beside.wait, 1800)
            run = await latest_run(dsn)
            results["F_beside_apply"] = during
            results["R3"] = {
                "seconds": time.monotonic() - started,
                "examined": run["examined"],
                "rate": run["examined"] / (time.monotonic() - started),
                "counts": run["counts"],
                "still_running_after_F": running_during,
            }
            print(f"  F beside an apply: {during}\n  R3: {results['R3']}", flush=True)
            await drop_database(admin, "bench_reprocess")
        finally:
            server.cleanup()

    lines = [
        f"raw callbacks: {results['raw_callbacks']:,} (apicontrol, 2 per message), filled in"
        f" {results['fill_s']:.0f} s",
    ]
    for name, what in (
        ("R0", "dry run, nothing to change"),
        ("R1", "dry run, half would change"),
        ("R2", "apply, half change"),
        ("R3", "apply back, beside F"),
    ):
        r = results[name]
        lines.append(f"{name} {what}: {r['rate']:,.0f} raw callbacks/s ({r['seconds']:.1f} s)")
    f_alone, f_during = results["F_alone"], results["F_beside_apply"]
    holds = f_during.get("check_ok") and f_during.get("p99_ms", 1e9) <= F_FLOOR_MS
    lines.append(
        f"F at {F_SHARE:.0%} of C ({F_SHARE * results['C_rps']:.0f}/s): p99 alone"
        f" {f_alone.get('p99_ms', float('nan')):.1f} ms, beside an apply"
        f" {f_during.get('p99_ms', float('nan')):.1f} ms (floor <= {F_FLOOR_MS:g}):"
        f" {'PASS' if holds else 'FAIL'}"
        + ("" if results["R3"]["still_running_after_F"] else " (the apply ended before F did)")
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"reprocess-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps({"results": results, "lines": lines}, indent=2, default=str))
    print("\n".join(lines))
    print(f"results: {out}")
    return 0 if holds else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(asyncio.run(main()))
