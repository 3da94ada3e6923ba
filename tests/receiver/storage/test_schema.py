"""migrations/schema.sql says what the migrations leave: regenerate it with `make schema`."""

from __future__ import annotations

import difflib

import asyncpg
import pytest

from receiver.storage.migrate import apply_migrations, migrations_dir
from tests import schema

DIFF_LINES = 80


async def test_schema_file_matches_the_migrations(fresh_database: str) -> None:
    connection = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(connection, migrations_dir())
    finally:
        await connection.close()

    try:
        dumped = await schema.dump_schema(fresh_database)
    except schema.VersionMismatch as mismatch:
        pytest.skip(f"cannot compare with migrations/schema.sql: {mismatch}")

    where = schema.SCHEMA_FILE
    if not where.is_file():
        pytest.fail(f"{where} is missing: run `make schema` to write it", pytrace=False)
    committed = where.read_text()
    if committed != dumped:
        diff = list(
            difflib.unified_diff(
                committed.splitlines(),
                dumped.splitlines(),
                "migrations/schema.sql",
                "schema from the migrations",
                lineterm="",
            )
        )
        shown = "\n".join(diff[:DIFF_LINES])
        more = f"\n... ({len(diff) - DIFF_LINES} more diff lines)" if len(diff) > DIFF_LINES else ""
        pytest.fail(
            "migrations/schema.sql is not what the migrations leave: run `make schema` and "
            f"commit the file\n{shown}{more}",
            pytrace=False,
        )
