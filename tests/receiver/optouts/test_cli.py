"""`sms-receiver opt-outs import|export` on the test database: lists moved in and out as CSV,
bad lines named by number with nothing of the file stored."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.cli_runs import cli_run, commands_on


@pytest.fixture(autouse=True)
def database(monkeypatch: pytest.MonkeyPatch, dsn: str, db: asyncpg.Connection) -> None:
    commands_on(monkeypatch, dsn)  # emptied by `db`


async def test_a_list_is_imported_then_exported_and_imported_again_unchanged(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    await db.execute("INSERT INTO tenants (name) VALUES ('shop')")
    source = tmp_path / "list.csv"
    source.write_text(
        "number,tenant,sender\n"
        "+447700900011,,\n"
        "447700900012,shop,+447700900990\n"
        "+447700900013,shop,MyShop\n"
    )

    ran = await cli_run(capsys, "opt-outs", "import", str(source))
    assert ran.status == 0, ran.err
    assert ran.out.strip() == "3 entries added (0 were on the list already)"
    exported = tmp_path / "out.csv"
    assert (await cli_run(capsys, "opt-outs", "export", str(exported))).status == 0
    again = await cli_run(capsys, "opt-outs", "import", str(exported))

    assert again.out.strip() == "0 entries added (3 were on the list already)"
    rows = await db.fetch("SELECT number, tenant, sender, source FROM opt_outs ORDER BY number")
    assert [tuple(r) for r in rows] == [
        ("+447700900011", "default", None, "import"),
        ("+447700900012", "shop", "+447700900990", "import"),
        ("+447700900013", "shop", "MyShop", "import"),
    ]
    lines = exported.read_text().splitlines()
    assert lines[0] == "number,tenant,sender,source,created_at"
    assert lines[2].startswith("+447700900012,shop,+447700900990,import,")


async def test_bad_lines_are_named_and_nothing_is_stored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    source = tmp_path / "list.csv"
    source.write_text(
        "number,tenant,sender\n+447700900011,,\n12,,\n+447700900013,nobody,\n"
        "+447700900014,,not a sender id!\n"
    )

    ran = await cli_run(capsys, "opt-outs", "import", str(source))

    assert ran.status == 1
    assert "line 3: number:" in ran.err
    assert "line 4: tenant: no tenant named 'nobody'" in ran.err
    assert "line 5: sender:" in ran.err
    assert await db.fetchval("SELECT count(*) FROM opt_outs") == 0
