"""`sms-receiver reprocess --all`: a correction run from the terminal, with a progress bar, a
summary, and the full detail as JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, TextIO

import asyncpg

from normalizers.registry import Registry
from receiver.config import Settings
from receiver.corrections.run import APPLY, DRY_RUN, Corrector, Window, versions_of
from receiver.storage import corrections as store
from receiver.storage.notify import CHANNEL

# Only one run applies at a time, whichever instance or terminal started it.
APPLY_LOCK = 0x5C0_44EC7


@dataclass(frozen=True, slots=True)
class RunRequest:
    provider: str | None
    since: datetime | None
    until: datetime | None  # None: until the run starts
    mode: str
    report: str | None
    batch_size: int = 100
    pause_ratio: float = 1.0


class Progress:
    """One line on the terminal, redrawn at most 4 times a second (a line every 10 s when the
    output is not a terminal): done, total, rate and time left."""

    def __init__(self, out: TextIO, total: int) -> None:
        self.out = out
        self.total = total
        self.started = time.monotonic()
        self.shown = 0.0
        self.tty = out.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.shown < (0.25 if self.tty else 10.0) and done < total:
            return
        self.shown = now
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        width = 30
        filled = int(width * done / total) if total else width
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} raw callbacks"
            f"  {rate:,.0f}/s  {_clock(left)} left"
        )
        self.out.write(("\r" + line) if self.tty else (line + "\n"))
        self.out.flush()

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"


def who_is_running() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


async def start_or_resume(
    connection: asyncpg.Connection,
    registry: Registry,
    request: RunRequest,
    started_by: str,
    emit: Any = print,
) -> asyncpg.Record | None:
    """The run to do: an apply of the same window that did not finish is resumed from its
    cursor; anything else starts afresh (`until` fixed now, so callbacks arriving meanwhile,
    read by today's normalisers already, are not chased). None: another run is applying."""
    versions = versions_of(registry)
    if request.mode == APPLY:
        if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", APPLY_LOCK):
            return None
        unfinished = await store.unfinished_apply(
            connection, request.provider, request.since, request.until
        )
        if unfinished is not None:
            resumed = await store.resume_run(connection, unfinished["id"], versions)
            if resumed is not None:
                emit(
                    f"resuming run {resumed['id']} after {resumed['examined']:,} of"
                    f" {resumed['total']:,} raw callbacks"
                )
                return resumed
    window = Window(request.provider, request.since, until_now(request.until))
    total = await store.window_size(connection, window.provider, window.since, window.until)
    return await store.create_run(
        connection,
        run_id=uuid.uuid4(),
        mode=request.mode,
        started_by=started_by,
        provider=window.provider,
        since=window.since,
        until=window.until,
        versions=versions,
        total=total,
    )


async def reprocess_all(
    dsn: str,
    registry: Registry,
    settings: Settings,
    request: RunRequest,
    server_settings: dict[str, str] | None = None,
    report_file: IO[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """A run from the terminal; its detail lines go to `report_file` (JSON lines)."""
    out, err = out or sys.stdout, err or sys.stderr
    connection = await asyncpg.connect(dsn, server_settings=server_settings)
    try:
        run = await start_or_resume(
            connection, registry, request, who_is_running(), lambda line: print(line, file=out)
        )
        if run is None:
            print(
                "another correction run is applying now: wait for it to end, or stop it",
                file=err,
            )
            return 2
        written = report_file

        def detail(line: dict[str, Any]) -> None:
            if written is not None:
                written.write(json.dumps({"run": str(run["id"]), **line}) + "\n")

        async def wake() -> None:
            await connection.execute("SELECT pg_notify($1, '')", CHANNEL)

        progress = Progress(err, run["total"])
        corrector = Corrector(
            connection=connection,
            registry=registry,
            regions=settings.regions(),
            silence_s=lambda provider: _silence(settings, registry, provider),
            batch_size=request.batch_size,
            pause_ratio=request.pause_ratio,
            detail=detail,
            progress=progress,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Not where signals cannot be handled (a thread, Windows): Ctrl-C then ends the run
        # mid-batch, which rolls back and is resumed the same.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, stop.set)
        mode = "dry run" if run["mode"] == DRY_RUN else "apply"
        print(f"correction run {run['id']} ({mode}): {_window_text(run)}", file=out)
        tally = await corrector.run(run, stop)
        progress.close()
        if run["mode"] == APPLY and tally.changed_callbacks:
            await wake()
        for line in tally.summary(run["mode"]):
            print(line, file=out)
        if request.report:
            print(f"detail: {request.report}", file=out)
        if stop.is_set():
            print(
                f"stopped after {tally.examined:,} raw callbacks;"
                + (" run the same command to resume" if run["mode"] == APPLY else ""),
                file=out,
            )
            return 130
        return 0
    finally:
        await connection.close()


def _silence(settings: Settings, registry: Registry, provider: str) -> float:
    return (
        settings.silence_timeout(provider) if provider in registry else settings.silence_timeout_s
    )


def _window_text(run: asyncpg.Record) -> str:
    since = run["since"].isoformat() if run["since"] else "the first"
    return (
        f"{run['provider'] or 'every provider'}, raw callbacks received from {since}"
        f" until {run['until'].isoformat()} ({run['total']:,})"
    )


def until_now(until: datetime | None) -> datetime:
    return until if until is not None else datetime.now(UTC)
