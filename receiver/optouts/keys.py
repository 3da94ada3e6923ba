"""The opt-out list's key at start: entries hashed again when it changed (see migration 0024)."""

from __future__ import annotations

import asyncpg
import structlog

from receiver.config import Settings
from receiver.storage import optouts
from receiver.storage.pool import Database

log = structlog.get_logger("receiver.optouts")


async def check_key(db: Database, settings: Settings) -> None:
    if settings.opt_out_secret is None:
        log.warning(
            "opt_out_key_in_database",
            hint="set OPT_OUT_SECRET: the opt-out list's hashes of erased numbers are only as"
            " safe as their key, now kept in the database beside them",
        )
    try:
        async with db.connection() as connection:
            rehashed, lost = await optouts.rekey(connection)
    except asyncpg.UndefinedFunctionError:
        # A database not migrated yet (serve answers /readyz 503 meanwhile): the next start,
        # after the migrations, looks again.
        log.warning("opt_out_key_not_checked", reason="migration 0024 is not applied")
        return
    if rehashed or lost:
        log.warning("opt_out_key_changed", rehashed=rehashed, erased_entries_lost=lost)
