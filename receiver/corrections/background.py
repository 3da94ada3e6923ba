"""Correction runs started through the API or the console: each on a connection of its own, in
a task of this instance, stopped (resumable) when the instance stops."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiohttp import web

from receiver.context import AppContext
from receiver.corrections.command import RunRequest, start_or_resume
from receiver.corrections.run import APPLY, Corrector
from receiver.storage.pool import session_settings

log = structlog.get_logger("receiver.corrections")


class AnotherApply(Exception):
    """Only one run applies at a time."""


@dataclass
class Running:
    task: asyncio.Task[None]
    stop: asyncio.Event


@dataclass
class BackgroundRuns:
    dsn: str
    runs: dict[uuid.UUID, Running] = field(default_factory=dict)

    async def start(
        self, context: AppContext, request: RunRequest, started_by: str
    ) -> asyncpg.Record:
        connection = await asyncpg.connect(
            self.dsn, server_settings=session_settings(context.settings)
        )
        try:
            run = await start_or_resume(
                connection, context.registry, request, started_by, lambda line: None
            )
        except BaseException:
            await connection.close()
            raise
        if run is None:
            await connection.close()
            raise AnotherApply("another correction run is applying now")
        stop = asyncio.Event()
        corrector = Corrector(
            connection=connection,
            registry=context.registry,
            regions=context.settings.regions(),
            silence_s=lambda provider: (
                context.settings.silence_timeout(provider)
                if provider in context.registry
                else context.settings.silence_timeout_s
            ),
            batch_size=request.batch_size,
            pause_ratio=request.pause_ratio,
            wake=context.signal.new_events if run["mode"] == APPLY else lambda: None,
        )

        async def work() -> None:
            try:
                tally = await corrector.run(run, stop)
                log.info(
                    "correction_run_ended",
                    run=str(run["id"]),
                    mode=run["mode"],
                    examined=tally.examined,
                    corrected=tally.changed_callbacks,
                )
            except Exception:
                log.exception("correction_run_failed", run=str(run["id"]))
            finally:
                self.runs.pop(run["id"], None)
                await connection.close()

        self.runs[run["id"]] = Running(asyncio.create_task(work()), stop)
        return run

    def stop(self, run_id: uuid.UUID) -> bool:
        """Ends the run after its batch in hand, when this instance runs it."""
        running = self.runs.get(run_id)
        if running is None:
            return False
        running.stop.set()
        return True

    async def close(self) -> None:
        for running in list(self.runs.values()):
            running.stop.set()
        for running in list(self.runs.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running.task, 30)


RUNS = web.AppKey("correction_runs", BackgroundRuns)
