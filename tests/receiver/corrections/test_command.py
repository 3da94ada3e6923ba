"""`sms-receiver reprocess --all`, as an operator types it: a dry run's summary and its detail
file, an unparsed callback the fixed normaliser reads, the apply, and what the command refuses."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.cli_runs import cli_run, commands_on

BODY = json.dumps(
    {"message_sid": "cli-1", "status": "delivered", "to": "15162065574", "type": "sms"}
).encode()


async def test_a_dry_run_then_the_apply_from_the_terminal(
    dsn: str,
    db: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands_on(monkeypatch, dsn)
    # Read by today's normaliser, though an older one could not: unparsed when stored.
    raw_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO raw_callbacks (id, provider, method, path, body, received_at, outcome, error)"
        " VALUES ($1, 'carrierx', 'POST', '/callbacks/carrierx', $2, now() - interval '1 minute',"
        " 'unparsed', 'old bug')",
        raw_id,
        BODY,
    )
    report = tmp_path / "dry.jsonl"

    dry = await cli_run(capsys, "reprocess", "--all", "--dry-run", "--report", str(report))

    assert dry.status == 0, dry.err
    assert "1 raw callbacks read again: 1 would be corrected (1 unparsed before)" in dry.out
    assert "events would be added 1, removed 0, changed 0" in dry.out
    [line] = [json.loads(text) for text in report.read_text().splitlines()]
    assert line["raw_id"] == str(raw_id)
    assert [(a["status"], a["replaces"]) for a in line["added"]] == [("delivered", None)]
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "unparsed"

    applied = await cli_run(
        capsys, "reprocess", "--all", "--apply", "--report", str(tmp_path / "apply.jsonl")
    )

    assert applied.status == 0, applied.err
    assert "events added 1" in applied.out
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "normalised"
    correction = await db.fetchval("SELECT correction FROM events WHERE raw_id = $1", raw_id)
    assert json.loads(correction)["replaces"] is None
    runs = await db.fetch("SELECT mode, state, started_by FROM correction_runs ORDER BY started_at")
    assert [(r["mode"], r["state"]) for r in runs] == [
        ("dry_run", "finished"),
        ("apply", "finished"),
    ]
    assert all(r["started_by"].startswith("cli:") for r in runs)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--all"], "needs --dry-run (look first) or --apply"),
        (["--apply"], "go with --all"),
        (
            [
                "--all",
                "--dry-run",
                "--since",
                "2026-02-01T00:00:00Z",
                "--until",
                "2026-01-01T00:00:00Z",
            ],
            "--since must be before --until",
        ),
    ],
)
async def test_what_the_command_refuses(
    dsn: str,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    said: str,
) -> None:
    commands_on(monkeypatch, dsn)
    ran = await cli_run(capsys, "reprocess", *argv)
    assert ran.status == 2
    assert said in ran.err
    assert await db.fetchval("SELECT count(*) FROM correction_runs") == 0
