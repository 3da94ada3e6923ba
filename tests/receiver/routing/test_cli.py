"""`sms-receiver routes import|export|list` on the test database: a file in version control
becomes the routes (all or nothing), and an export reads back to the same routes."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.cli_runs import cli_run, commands_on

ROUTES = """
[[route]]
name = "uk"
match = { country = ["GB"] }
providers = ["swift", "carrierx"]
redeliver = { on = ["undelivered", "expired"], within_s = 600, max_attempts = 2 }

[[route]]
name = "split"
providers = ["swift", "carrierx"]
choose = "weighted"
weights = { swift = 70, carrierx = 30 }
"""


@pytest.fixture(autouse=True)
def database(monkeypatch: pytest.MonkeyPatch, dsn: str, db: asyncpg.Connection) -> None:
    commands_on(monkeypatch, dsn)  # emptied by `db`


async def test_an_import_makes_the_routes_the_files_and_an_export_reads_back_the_same(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    source = tmp_path / "routes.toml"
    source.write_text(ROUTES)

    made = await cli_run(capsys, "routes", "import", str(source))
    assert made.status == 0, made.err
    assert "create: uk, split" in made.out
    exported = tmp_path / "exported.toml"
    assert (await cli_run(capsys, "routes", "export", str(exported))).status == 0
    again = await cli_run(capsys, "routes", "import", str(exported))

    assert again.status == 0, again.err
    assert again.out.strip() == "unchanged: uk, split"
    rows = await db.fetch("SELECT name, position FROM send_routes ORDER BY position")
    assert [(r["name"], r["position"]) for r in rows] == [("uk", 10), ("split", 20)]
    whos = await db.fetch("SELECT DISTINCT who, action FROM send_route_changes")
    assert {r["action"] for r in whos} == {"create"}
    assert all(r["who"].startswith("cli (") for r in whos)
    listed = await cli_run(capsys, "routes", "list")
    assert listed.out.splitlines()[0].split()[:3] == ["10", "uk", "priority"]


async def test_a_route_left_out_of_the_file_is_deleted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    source = tmp_path / "routes.toml"
    source.write_text(ROUTES)
    await cli_run(capsys, "routes", "import", str(source))
    source.write_text(ROUTES.split('[[route]]\nname = "split"')[0])

    ran = await cli_run(capsys, "routes", "import", str(source))

    assert ran.status == 0, ran.err
    assert "delete: split" in ran.out
    assert await db.fetchval("SELECT array_agg(name) FROM send_routes") == ["uk"]


async def test_a_bad_file_names_each_route_and_field_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, db: asyncpg.Connection
) -> None:
    source = tmp_path / "routes.toml"
    source.write_text(
        ROUTES
        + '\n[[route]]\nname = "bad"\nproviders = ["pigeon"]\nweights = { pigeon = 0 }\n'
        + '\n[[route]]\nname = "Bad Name"\nproviders = ["swift"]\n'
    )

    ran = await cli_run(capsys, "routes", "import", str(source))

    assert ran.status == 1
    assert "route 3 (bad): weights.pigeon:" in ran.err
    assert "route 4 (Bad Name): name:" in ran.err
    assert await db.fetchval("SELECT count(*) FROM send_routes") == 0


async def test_a_file_that_is_not_toml_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "routes.toml"
    source.write_text("[[route]\nname = ")

    ran = await cli_run(capsys, "routes", "import", str(source))

    assert ran.status == 1
    assert "not TOML" in ran.err
