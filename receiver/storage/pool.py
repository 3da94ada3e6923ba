"""Connecting to Postgres: the DSN (given, or the embedded server's), the connection pool, and
the one way code borrows a connection from it (with the configured wait)."""

from __future__ import annotations

import asyncio
import time
import warnings
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from receiver.config import Settings
from receiver.storage.errors import is_database_unavailable

log = structlog.get_logger("receiver.storage.pool")

# A connection of its own or one borrowed from the pool: queries run on either.
Connection = asyncpg.Connection | PoolConnectionProxy


class Database:
    """The pool, and how long a caller waits for one of its connections before the database
    counts as unavailable (DB_ACQUIRE_TIMEOUT_S)."""

    def __init__(self, pool: asyncpg.Pool, acquire_timeout_s: float) -> None:
        self.pool = pool
        self.acquire_timeout_s = acquire_timeout_s

    def connection(self) -> AbstractAsyncContextManager[PoolConnectionProxy]:
        """`async with db.connection() as connection:` a pooled connection, given back after."""
        return self.pool.acquire(timeout=self.acquire_timeout_s)

    async def close(self) -> None:
        await self.pool.close()


def start_embedded_postgres(data_dir: Path) -> Any:
    """Start (or reuse) the embedded Postgres whose data lives in `data_dir`, kept between runs.

    The server is stopped when the last process using it exits."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as error:  # pragma: no cover - depends on the install
        raise SystemExit(
            "DATABASE_URL is not set and the embedded Postgres is not installed: "
            "install with `pip install sms-receiver[embedded]` or set DATABASE_URL"
        ) from error
    data_dir.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(data_dir.resolve(), cleanup_mode="stop")


def resolve_dsn(settings: Settings) -> tuple[str, Any]:
    """The DSN to use, and the embedded server handle to keep alive (None for an external one)."""
    if settings.database_url:
        return settings.database_url, None
    server = start_embedded_postgres(settings.embedded_pg_dir)
    dsn: str = server.get_uri()
    log.info("embedded_postgres_started", data_dir=str(settings.embedded_pg_dir))
    return dsn, server


async def open_database(dsn: str, settings: Settings, max_size: int | None = None) -> Database:
    """A pool of DB_POOL_MAX_SIZE connections, or of `max_size` (a pool of its own for one
    use: callbacks are stored on connections no API reader can take)."""
    pool = await create_pool(dsn, settings, max_size)
    return Database(pool, settings.db_acquire_timeout_s)


async def create_pool(dsn: str, settings: Settings, max_size: int | None = None) -> asyncpg.Pool:
    size = settings.db_pool_max_size if max_size is None else max_size
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(settings.db_pool_min_size, size),
        max_size=size,
        command_timeout=settings.db_command_timeout_s,
        # Idle connections are recycled so that a restarted server is not met by stale ones.
        max_inactive_connection_lifetime=60.0,
        reset=_keep_session,
        server_settings=session_settings(settings),
    )
    assert pool is not None
    return pool


def session_settings(settings: Settings) -> dict[str, str]:
    """What the hub's own SQL reads from its session: the reply window of store_events'
    attribution of replies (reply_tenant, migration 0021); the opt-out keywords, scope and key
    (migration 0024)."""

    def words(text: str) -> str:
        return ",".join(w.strip().upper() for w in text.split(",") if w.strip())

    values = {
        "smsr.reply_window_days": str(settings.reply_window_days),
        "smsr.opt_out_keywords": words(settings.opt_out_keywords),
        "smsr.opt_in_keywords": words(settings.opt_in_keywords),
        "smsr.opt_out_all_keywords": words(settings.opt_out_all_keywords),
        "smsr.help_keywords": words(settings.help_keywords),
        "smsr.opt_out_scope": settings.opt_out_scope,
    }
    pads = settings.opt_out_pads()
    if pads is not None:
        values["smsr.opt_out_pads"] = pads
    return values


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Nothing to reset: no code of ours leaves session state (SET, LISTEN, advisory locks,
    cursors) on a pooled connection, and asyncpg still rolls back a transaction left open. The
    default reset query would cost every request one more round trip (10% of a callback's time
    under load, measured with py-spy)."""


async def wait_for_database(dsn: str, timeout_s: float) -> None:
    """Retry connecting until the database answers or `timeout_s` passes (then raise)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        try:
            connection = await asyncpg.connect(dsn, timeout=5)
        except Exception as error:
            if not is_database_unavailable(error) or time.monotonic() + delay > deadline:
                raise
            log.warning("database_not_ready", error=repr(error), retry_in_s=round(delay, 1))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            await connection.close()
            return
