"""Applies the numbered plain-SQL migrations in order, each once, each in its own transaction,
under an advisory lock so that instances starting together do not race."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from receiver.storage.pool import Connection

log = structlog.get_logger("receiver.storage.migrate")

# Any constant shared by every instance; "smsr" in ASCII.
MIGRATION_LOCK_KEY = 0x736D7372

_FILE_NAME = re.compile(r"^(\d{4})_[\w-]+\.sql$")
# The schema as the migrations leave it, written by `make schema` for readers: not a migration.
SCHEMA_FILE = "schema.sql"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir(configured: Path | None = None) -> Path:
    """The installed copy (inside the package) or the repository's `migrations/`."""
    if configured is not None:
        return configured
    package = Path(__file__).resolve().parent.parent  # receiver/
    for candidate in (package / "migrations", package.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no migrations directory found; set MIGRATIONS_DIR")


def load_migrations(directory: Path) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        if path.name == SCHEMA_FILE:
            continue
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name must look like 0001_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), path.stem, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number in {directory}")
    return found


CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def apply_migrations(connection: asyncpg.Connection, directory: Path) -> list[str]:
    """Apply the pending migrations; returns the names applied (empty when up to date)."""
    migrations = load_migrations(directory)
    applied_names: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(CREATE_TABLE)
        rows = await connection.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {row["version"]: row["checksum"] for row in rows}
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    log.warning("migration_changed_after_apply", migration=migration.name)
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("migration_applied", migration=migration.name)
            applied_names.append(migration.name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_names


async def applied_versions(connection: Connection) -> set[int]:
    """The versions applied; empty when the database was never migrated."""
    try:
        rows = await connection.fetch("SELECT version FROM schema_migrations")
    except asyncpg.UndefinedTableError:
        return set()
    return {row["version"] for row in rows}


async def pending_migrations(connection: Connection, directory: Path) -> list[str]:
    """The migrations this version has that the database has not applied."""
    applied = await applied_versions(connection)
    return [m.name for m in load_migrations(directory) if m.version not in applied]
