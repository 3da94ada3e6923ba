"""The local spool: callbacks that arrive while Postgres cannot take them are written to a file
and fsynced before they are acknowledged, then stored in Postgres once it is back.

Providers' retry windows are short or undocumented: a callback answered 503 during an outage
may never come again. With `SPOOL_DIR` set, such a callback is appended to `<dir>/spool.jsonl`
(one JSON line: the raw request as received, its raw id and receipt time, and the verdict of its
authentication), fsynced, and answered 202 `spooled`. A replay task moves the file aside and
stores every line through the same pipeline; storing is idempotent on the raw id, so a line
stored twice (a replay cut short) changes nothing. The file is bounded by `SPOOL_MAX_BYTES`:
beyond, the answer is 503 again."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import structlog

from normalizers.registry import Registry
from receiver.config import Settings
from receiver.ids import time_ordered_uuid
from receiver.pipeline import REJECTED, UNPARSED, Normalised, normalise, store_callback
from receiver.queries import RawCallback
from receiver.signal import Signal

log = structlog.get_logger("receiver.spool")

SPOOL_FILE = "spool.jsonl"
REPLAYING_SUFFIX = ".replaying"


@dataclass(frozen=True, slots=True)
class Spooled:
    raw: RawCallback
    rejected: str | None  # the authentication's refusal, decided on arrival (signatures expire)
    status: int | None  # the answer given for a refusal (401 or 403)


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.path = directory / SPOOL_FILE
        self._lock = threading.Lock()  # appends come from worker threads

    async def append(self, raw: RawCallback, rejected: str | None, status: int | None) -> bool:
        """Writes and fsyncs the callback; False when the spool is full (or cannot be written),
        and then nothing was written."""
        line = _encode(raw, rejected, status)
        try:
            return await asyncio.to_thread(self._append, line)
        except OSError as error:
            log.error("spool_write_failed", error=repr(error))
            return False

    def _append(self, line: bytes) -> bool:
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            size = self.path.stat().st_size if self.path.exists() else 0
            if size + len(line) > self.max_bytes:
                return False
            with self.path.open("ab") as spool:
                spool.write(line)
                spool.flush()
                os.fsync(spool.fileno())
            if size == 0:
                _fsync_directory(self.directory)  # the new file's name is durable too
            return True

    def take(self) -> list[Path]:
        """Moves the current spool aside (new callbacks go to a new file) and returns every
        file waiting to be replayed, older ones first."""
        with self._lock:
            if self.path.exists() and self.path.stat().st_size > 0:
                # Time-ordered names: replayed in the order they were spooled.
                self.path.rename(self.directory / f"{time_ordered_uuid()}{REPLAYING_SUFFIX}")
                _fsync_directory(self.directory)
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob(f"*{REPLAYING_SUFFIX}"))

    def done(self, replayed: Path) -> None:
        replayed.unlink()
        _fsync_directory(self.directory)

    def size(self) -> int:
        if not self.directory.exists():
            return 0
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())


def read(path: Path) -> list[Spooled]:
    """The spooled callbacks of a file; a torn last line (a crash mid-write, never answered
    2xx since it was not fsynced) is skipped."""
    entries = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            entries.append(_decode(line))
        except (ValueError, KeyError, TypeError) as error:
            log.error("spool_line_unreadable", file=str(path), line=number, error=repr(error))
    return entries


def _encode(raw: RawCallback, rejected: str | None, status: int | None) -> bytes:
    record = {
        "id": str(raw.id),
        "provider": raw.provider,
        "method": raw.method,
        "path": raw.path,
        "query": raw.query,
        "headers": [list(pair) for pair in raw.headers],
        "body": base64.b64encode(raw.body).decode(),
        "remote_addr": raw.remote_addr,
        "received_at": raw.received_at.isoformat(),
        "rejected": rejected,
        "status": status,
    }
    # Surrogates (undecodable header bytes) survive as escapes; they are cleaned when stored.
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _decode(line: bytes) -> Spooled:
    record = json.loads(line)
    raw = RawCallback(
        id=uuid.UUID(record["id"]),
        provider=record["provider"],
        method=record["method"],
        path=record["path"],
        query=record["query"],
        headers=[(str(name), str(value)) for name, value in record["headers"]],
        body=base64.b64decode(record["body"]),
        remote_addr=record["remote_addr"],
        received_at=datetime.fromisoformat(record["received_at"]),
    )
    return Spooled(raw=raw, rejected=record["rejected"], status=record["status"])


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def replay_forever(
    spool: Spool,
    pool: asyncpg.Pool,
    registry: Registry,
    settings: Settings,
    signal: Signal,
) -> None:
    """Stores what was spooled, every SPOOL_REPLAY_S, until cancelled."""
    while True:
        try:
            await replay(spool, pool, registry, settings, signal)
        except Exception as error:  # the database is still away: next round
            log.warning("spool_replay_paused", error=repr(error))
        await asyncio.sleep(settings.spool_replay_s)


async def replay(
    spool: Spool,
    pool: asyncpg.Pool,
    registry: Registry,
    settings: Settings,
    signal: Signal,
) -> int:
    """One round: every spooled file, stored callback by callback; a file is removed once all
    its callbacks are stored. Raises (and keeps the rest) while the database is unavailable.
    Returns how many callbacks were stored."""
    stored = 0
    for path in await asyncio.to_thread(spool.take):
        entries = await asyncio.to_thread(read, path)
        for entry in entries:
            provider = registry.get(entry.raw.provider)
            if entry.rejected is not None:
                normalised = Normalised(outcome=REJECTED, error=entry.rejected)
            elif provider is None:
                normalised = Normalised(outcome=UNPARSED, error="no provider of that name")
            else:
                normalised = normalise(provider, entry.raw, settings.max_events_per_callback)
            async with pool.acquire(timeout=settings.db_acquire_timeout_s) as connection:
                result, _ = await store_callback(connection, entry.raw, normalised)
            stored += 1
            if result.new_events:
                signal.new_events()
        await asyncio.to_thread(spool.done, path)
        log.info("spool_replayed", file=path.name, callbacks=len(entries))
    return stored
