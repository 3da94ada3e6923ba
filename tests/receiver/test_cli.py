"""The `sms-receiver` command as an operator runs it (a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from receiver.http.schemas import EventV1
from tests.corpus import STORAGE_FIELDS, load_cases

FIXTURES = Path(__file__).parent.parent / "fixtures" / "carrierx"


def body_file(tmp_path: Path, name: str) -> Path:
    """A corpus case's body alone, as an operator would save it."""
    path = tmp_path / name
    path.write_text(json.dumps(json.loads((FIXTURES / name).read_text())["request"]["body"]))
    return path


def run_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_normalize_prints_schema_v1_json_lines(tmp_path: Path) -> None:
    result = run_cli(
        "normalize",
        "--provider",
        "carrierx",
        str(body_file(tmp_path, "outbound_group_mms_queued.json")),
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    events = [EventV1.model_validate_json(line) for line in lines]
    assert [e.recipient for e in events] == ["+15162065574", "+15162065576"]
    assert {e.status for e in events} == {"queued"}
    assert set(json.loads(lines[0])) == set(EventV1.model_fields)


def test_normalize_reads_stdin_query_and_headers(tmp_path: Path) -> None:
    result = run_cli(
        "normalize",
        "--provider",
        "carrierx",
        "--method",
        "GET",
        "--query",
        "message_sid=s1&status=sent&to=15162065574",
        "--header",
        "User-Agent: test",
    )

    assert result.returncode == 0, result.stderr
    [event] = [EventV1.model_validate_json(line) for line in result.stdout.decode().splitlines()]
    assert (event.provider_message_id, event.status) == ("s1", "sent")

    piped = run_cli(
        "normalize",
        "--provider",
        "carrierx",
        "-",
        stdin=body_file(tmp_path, "inbound_sms.json").read_bytes(),
    )
    assert EventV1.model_validate_json(piped.stdout.decode()).type == "message.inbound"


def test_normalize_exits_1_with_one_line_when_it_cannot_parse() -> None:
    result = run_cli("normalize", "--provider", "carrierx", "-", stdin=b"<xml>nope</xml>")

    assert result.returncode == 1
    assert result.stdout == b""
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert result.stderr.startswith(b"error: cannot parse")


def test_migrate_command_applies_then_says_up_to_date(fresh_database: str) -> None:
    first = run_cli("migrate", env={"DATABASE_URL": fresh_database})
    second = run_cli("migrate", env={"DATABASE_URL": fresh_database})

    assert first.returncode == 0, first.stderr
    assert b"applied: 0001_initial" in first.stdout
    assert b"migrations up to date" in second.stdout


async def test_reprocess_command_dry_run_then_for_real(
    dsn: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    # A body the shipped normaliser reads, stored as unparsed as if an older one had failed.
    raw_id = uuid.uuid4()
    await db.execute(
        """
        INSERT INTO raw_callbacks (id, provider, method, path, body, received_at, outcome, error)
        VALUES ($1, 'carrierx', 'POST', '/callbacks/carrierx', $2, now(), 'unparsed', 'old bug')
        """,
        raw_id,
        body_file(tmp_path, "outbound_delivered.json").read_bytes(),
    )

    dry = run_cli("reprocess", "--dry-run", env={"DATABASE_URL": dsn})
    assert dry.returncode == 0, dry.stderr
    assert f"{raw_id} carrierx: would normalise into 1 events (1 new)".encode() in dry.stdout
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "unparsed"

    real = run_cli("reprocess", "--provider", "carrierx", env={"DATABASE_URL": dsn})
    assert real.returncode == 0, real.stderr
    assert b"1 unparsed examined: normalised 1 (1 new events), 0 still unparsed" in real.stdout
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "normalised"
    assert await db.fetchval("SELECT count(*) FROM events WHERE raw_id = $1", raw_id) == 1


ONE_CASE_PER_PROVIDER = {case.provider: case for case in load_cases() if "expected" in case.data}


@pytest.mark.parametrize("provider", sorted(ONE_CASE_PER_PROVIDER))
def test_normalize_gives_the_corpus_events_for_every_provider(
    provider: str, tmp_path: Path
) -> None:
    case = ONE_CASE_PER_PROVIDER[provider]
    body = tmp_path / "body"
    body.write_bytes(case.body)
    headers = [
        arg for name, value in case.headers.items() for arg in ("--header", f"{name}: {value}")
    ]

    result = run_cli(
        "normalize",
        "--provider",
        provider,
        "--method",
        case.method,
        "--query",
        case.query,
        "--received-at",
        case.data["received_at"],
        *headers,
        str(body),
    )

    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.decode().splitlines()]
    for event in printed:
        for name in STORAGE_FIELDS:
            event.pop(name)
    assert printed == case.data["expected"]
