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
import fcntl
import json
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from normalizers.registry import Registry
from receiver.config import Settings
from receiver.ingest.pipeline import store
from receiver.judgement import judge, unparsed
from receiver.storage.callbacks import RawCallback
from receiver.storage.errors import is_database_unavailable
from receiver.storage.ids import time_ordered_uuid
from receiver.storage.notify import Signal
from receiver.storage.pool import Database

log = structlog.get_logger("receiver.ingest.spool")

SPOOL_FILE = "spool.jsonl"
FAILED_FILE = "failed.jsonl"
REPLAYING_SUFFIX = ".replaying"
LOCK_FILE = ".lock"  # held (flock) by the one instance that owns the spool
# The spool holds providers' requests as received: only the hub's own user may read them.
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


class SpoolInUse(Exception):
    """Another process holds the spool directory."""


@dataclass(frozen=True, slots=True)
class Spooled:
    raw: RawCallback  # authenticated on arrival: a refused callback is never spooled


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.path = directory / SPOOL_FILE
        self._lock = threading.Lock()  # appends come from worker threads
        self._owner: int | None = None  # the descriptor of the held lock file
        self._bytes: int | None = None  # every file of the spool, replaying ones included

    async def append(self, raw: RawCallback) -> bool:
        """Writes and fsyncs the callback; False when the spool is full (or cannot be written),
        and then nothing of it stays in the file."""
        line = _encode(raw)
        try:
            return await asyncio.to_thread(self._append, line)
        except OSError as error:
            log.error("spool_write_failed", error=repr(error))
            return False

    def _append(self, line: bytes) -> bool:
        with self._lock:
            self._make_directory()
            if self._bytes is None:
                self._bytes = self.size()
            if self._bytes + len(line) > self.max_bytes:
                return False
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
            try:
                size = os.fstat(descriptor).st_size
                kept = _complete_lines(self.path, size)
                if kept != size:  # a torn line (a crash or a failed write): never acknowledged
                    os.truncate(self.path, kept)
                try:
                    written = 0
                    while written < len(line):
                        written += os.write(descriptor, line[written:])
                    os.fsync(descriptor)
                except OSError:
                    os.truncate(self.path, kept)  # nothing of this line stays behind
                    raise
            finally:
                os.close(descriptor)
            if kept == 0:
                _fsync_directory(self.directory)  # the new file's name is durable too
            self._bytes += len(line) - (size - kept)
            return True

    def hold(self) -> None:
        """Takes the spool for this process until `release` (or its end, however it ends): a
        second instance on the same directory could remove a file the first just wrote to.
        Raises SpoolInUse when another process holds it."""
        self._make_directory()
        descriptor = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise SpoolInUse(
                f"the spool directory {self.directory} is used by another running instance:"
                " give each instance a SPOOL_DIR of its own"
            ) from None
        self._owner = descriptor

    def release(self) -> None:
        if self._owner is not None:
            os.close(self._owner)  # and with it the lock
            self._owner = None

    def _make_directory(self) -> None:
        """The directory, only the hub's user's (an existing one is made so too)."""
        self.directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o777 != DIRECTORY_MODE:
            self.directory.chmod(DIRECTORY_MODE)

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
        with self._lock:
            size = replayed.stat().st_size
            replayed.unlink()
            _fsync_directory(self.directory)
            if self._bytes is not None:
                self._bytes = max(0, self._bytes - size)

    def set_aside(self, entry: Spooled) -> None:
        """Keeps a callback that cannot be stored at all (not even as unparsed) in
        `failed.jsonl`, out of the way of the others, for an operator to look at."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        with self._lock:
            self._make_directory()
            descriptor = os.open(self.directory / FAILED_FILE, flags, FILE_MODE)
            with os.fdopen(descriptor, "ab") as failed:
                failed.write(_encode(entry.raw))
                failed.flush()
                os.fsync(failed.fileno())

    def size(self) -> int:
        if not self.directory.exists():
            return 0
        return sum(
            p.stat().st_size
            for p in self.directory.iterdir()
            if p.is_file() and p.name not in (FAILED_FILE, LOCK_FILE)
        )


def _complete_lines(path: Path, size: int) -> int:
    """How many bytes of the file end with its last complete line."""
    if size == 0:
        return 0
    with path.open("rb") as spool:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            spool.seek(start)
            block = spool.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
        return 0


def read(path: Path) -> list[Spooled]:
    """The spooled callbacks of a file; a torn last line (a crash mid-write, never answered
    2xx since it was not fsynced) is skipped."""
    entries = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            record = json.loads(line)
            if record.get("rejected"):
                # Spooled by an earlier version, which spooled refusals too: not stored now.
                log.warning("spooled_refusal_dropped", file=str(path), line=number)
                continue
            entries.append(_decode(record))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            log.error("spool_line_unreadable", file=str(path), line=number, error=repr(error))
    return entries


def _encode(raw: RawCallback) -> bytes:
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
    }
    # Surrogates (undecodable header bytes) survive as escapes; they are cleaned when stored.
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _decode(record: dict[str, Any]) -> Spooled:
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
    return Spooled(raw=raw)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def replay_forever(
    spool: Spool,
    db: Database,
    registry: Registry,
    settings: Settings,
    signal: Signal,
) -> None:
    """Stores what was spooled, every SPOOL_REPLAY_S, until cancelled."""
    while True:
        try:
            await replay(spool, db, registry, settings, signal)
        except Exception as error:  # the database is still away: next round
            log.warning("spool_replay_paused", error=repr(error))
        await asyncio.sleep(settings.spool_replay_s)


async def replay(
    spool: Spool,
    db: Database,
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
            normalised = judge(
                registry,
                entry.raw,
                max_events=settings.max_events_per_callback,
                region=settings.provider(entry.raw.provider).default_region,
            )
            async with db.connection() as connection:
                try:
                    result, _ = await store(connection, entry.raw, normalised)
                except Exception as error:
                    if is_database_unavailable(error):
                        raise  # the rest waits for the next round
                    # Anything else would stop every later line for good: keep this one as
                    # unparsed, with the reason, for `reprocess` after a fix.
                    log.exception("spooled_callback_unparsed", raw_id=str(entry.raw.id))
                    try:
                        result, _ = await store(
                            connection, entry.raw, unparsed(f"replay failed: {error!r}")
                        )
                    except Exception as again:
                        if is_database_unavailable(again):
                            raise
                        log.exception("spooled_callback_set_aside", raw_id=str(entry.raw.id))
                        await asyncio.to_thread(spool.set_aside, entry)
                        continue
            stored += 1
            if result.new_events:
                signal.new_events()
        await asyncio.to_thread(spool.done, path)
        log.info("spool_replayed", file=path.name, callbacks=len(entries))
    return stored
