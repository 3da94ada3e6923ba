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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
import structlog
from prometheus_client import Histogram

from receiver import queries
from receiver.errors import is_data_refusal
from receiver.metrics import INGEST_BATCHES
from receiver.pipeline import Normalised, account_for, store_callback
from receiver.queries import CallbackToStore, Connection, IngestResult, RawCallback
from receiver.signal import Signal

log = structlog.get_logger("receiver.groupcommit")

Stored = tuple[IngestResult, str | None]  # what was stored, and the error kept on the raw row

Item = TypeVar("Item")
Result = TypeVar("Result")

# SQLSTATE class 40: the batch lost a conflict with a concurrent writer (deadlock,
# serialisation): one callback at a time, each waits its turn instead.
_CONFLICT_CLASS = "40"


@dataclass(slots=True)
class _Waiting(Generic[Item, Result]):
    item: Item
    answer: asyncio.Future[Result]


class Batcher(Generic[Item, Result]):
    """Runs `write` on batches of the items submitted while earlier batches were being written:
    at most `writers` batches at once, at most `max_batch` items each. `write` answers each
    item, in order, with its result or the exception it raised."""

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]],
        *,
        writers: int,
        max_batch: int,
        histogram: Histogram | None = None,
    ) -> None:
        self._write = write
        self._writers = writers
        self._max_batch = max_batch
        self._histogram = histogram
        self._queue: deque[_Waiting[Item, Result]] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """The item's result once its batch is written; raises what writing it raised."""
        waiting = _Waiting[Item, Result](item, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        if len(self._running) < self._writers:
            task = asyncio.create_task(self._drain())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        # Shielded: a caller that goes away does not take the batch down with it; its item is
        # written all the same.
        return await asyncio.shield(waiting.answer)

    async def close(self) -> None:
        """Waits for the batches being written."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _drain(self) -> None:
        while self._queue:
            size = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(size)]
            if self._histogram is not None:
                self._histogram.observe(size)
            try:
                outcomes = await self._write([waiting.item for waiting in batch])
            except Exception as error:
                outcomes = [error] * len(batch)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    waiting.answer.set_exception(outcome)
                else:
                    waiting.answer.set_result(outcome)


class CallbackWriter:
    """Stores callbacks, those arriving together in one call and one transaction."""

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
        self._acquire_timeout_s = acquire_timeout_s
        self._batcher = Batcher[tuple[RawCallback, Normalised], Stored](
            self._write, writers=writers, max_batch=max_batch, histogram=INGEST_BATCHES
        )

    async def store(self, raw: RawCallback, normalised: Normalised) -> Stored:
        """Stores one callback (with whatever else is waiting) and returns its result once
        committed; raises what storing it raised. A caller that goes away does not stop it (the
        provider will retry it and find it a duplicate)."""
        return await self._batcher.submit((raw, normalised))

    async def close(self) -> None:
        await self._batcher.close()

    async def _write(self, batch: list[tuple[RawCallback, Normalised]]) -> list[Stored | Exception]:
        async with self._pool.acquire(timeout=self._acquire_timeout_s) as connection:
            outcomes = await self._store(connection, batch)
        if any(not isinstance(o, Exception) and o[0].new_events for o in outcomes):
            self._signal.new_events()  # once per batch
        return outcomes

    async def _store(
        self, connection: Connection, batch: list[tuple[RawCallback, Normalised]]
    ) -> list[Stored | Exception]:
        if len(batch) > 1:
            try:
                results = await queries.ingest_callbacks(
                    connection,
                    [
                        CallbackToStore(
                            raw=raw,
                            outcome=normalised.outcome,
                            error=normalised.error,
                            events=normalised.events,
                        )
                        for raw, normalised in batch
                    ],
                )
            except asyncpg.PostgresError as error:
                if not (is_data_refusal(error) or lost_conflict(error)):
                    raise
                log.warning("batch_stored_one_by_one", callbacks=len(batch), error=repr(error))
            else:
                stored: list[Stored | Exception] = []
                for raw, normalised in batch:
                    result = results[raw.id]
                    account_for(raw, normalised, result)
                    stored.append((result, normalised.error))
                return stored
        one_by_one: list[Stored | Exception] = []
        for raw, normalised in batch:
            try:
                one_by_one.append(await store_callback(connection, raw, normalised))
            except Exception as error:
                one_by_one.append(error)
        return one_by_one


def lost_conflict(error: asyncpg.PostgresError) -> bool:
    return str(error.sqlstate or "").startswith(_CONFLICT_CLASS)
