"""Group commit: callbacks that arrive together are stored together.

Each callback handler hands its raw callback and events to the `CallbackWriter` and waits for
its own result. At most `writers` transactions store callbacks at once; whatever arrives while
they are all busy waits for the next free one and is stored with the others in one call and one
transaction (one round trip, one commit flush). Nothing waits on purpose: a callback alone is
stored at once, and the wait grows only with the load, bounded by one transaction. A batch the
database refuses as a whole (a value out of range in one callback, a conflict with a concurrent
writer) is stored again one callback at a time, so that one bad callback costs only itself."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import asyncpg
import structlog

from receiver import queries
from receiver.errors import is_data_refusal
from receiver.metrics import INGEST_BATCHES
from receiver.pipeline import Normalised, account_for, store_callback
from receiver.queries import CallbackToStore, IngestResult, RawCallback
from receiver.signal import Signal

log = structlog.get_logger("receiver.groupcommit")

Stored = tuple[IngestResult, str | None]  # what was stored, and the error kept on the raw row

# SQLSTATE class 40: the batch lost a conflict with a concurrent writer (deadlock,
# serialisation): one callback at a time, each waits its turn instead.
_CONFLICT_CLASS = "40"


@dataclass(slots=True)
class _Waiting:
    raw: RawCallback
    normalised: Normalised
    answer: asyncio.Future[Stored]


class CallbackWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        signal: Signal,
        *,
        writers: int,
        max_batch: int,
        acquire_timeout_s: float,
    ) -> None:
        self._pool = pool
        self._signal = signal
        self._writers = writers
        self._max_batch = max_batch
        self._acquire_timeout_s = acquire_timeout_s
        self._queue: deque[_Waiting] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def store(self, raw: RawCallback, normalised: Normalised) -> Stored:
        """Stores one callback (with whatever else is waiting) and returns its result once
        committed; raises what storing it raised."""
        waiting = _Waiting(raw, normalised, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if len(self._running) < self._writers:
            task = asyncio.create_task(self._drain())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        # Shielded: a caller that goes away does not take the batch down with it; its callback
        # is stored all the same (the provider will retry it and find it a duplicate).
        return await asyncio.shield(waiting.answer)

    async def close(self) -> None:
        """Waits for the batches being written."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _drain(self) -> None:
        while self._queue:
            size = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(size)]
            INGEST_BATCHES.observe(size)
            try:
                outcomes = await self._write(batch)
            except Exception as error:
                outcomes = [error] * len(batch)
            new_events = False
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    waiting.answer.set_exception(outcome)
                else:
                    new_events = new_events or bool(outcome[0].new_events)
                    waiting.answer.set_result(outcome)
            if new_events:
                self._signal.new_events()  # once per batch

    async def _write(self, batch: list[_Waiting]) -> list[Stored | Exception]:
        async with self._pool.acquire(timeout=self._acquire_timeout_s) as connection:
            if len(batch) > 1:
                try:
                    results = await queries.ingest_callbacks(
                        connection,
                        [
                            CallbackToStore(
                                raw=waiting.raw,
                                outcome=waiting.normalised.outcome,
                                error=waiting.normalised.error,
                                events=waiting.normalised.events,
                            )
                            for waiting in batch
                        ],
                    )
                except asyncpg.PostgresError as error:
                    if not (is_data_refusal(error) or _lost_conflict(error)):
                        raise
                    log.warning("batch_stored_one_by_one", callbacks=len(batch), error=repr(error))
                else:
                    stored: list[Stored | Exception] = []
                    for waiting in batch:
                        result = results[waiting.raw.id]
                        account_for(waiting.raw, waiting.normalised, result)
                        stored.append((result, waiting.normalised.error))
                    return stored
            one_by_one: list[Stored | Exception] = []
            for waiting in batch:
                try:
                    one_by_one.append(
                        await store_callback(connection, waiting.raw, waiting.normalised)
                    )
                except Exception as error:
                    one_by_one.append(error)
            return one_by_one


def _lost_conflict(error: asyncpg.PostgresError) -> bool:
    return str(error.sqlstate or "").startswith(_CONFLICT_CLASS)
