"""Group commit: callbacks that arrive together are stored together.

Each callback handler hands its raw callback and events to the `CallbackWriter` and waits for
its own result. One transaction stores callbacks at a time (more under a backlog, see
`Batcher`); whatever arrives while it is busy is stored by the next one, with the others, in one
call and one transaction (one round trip, one commit flush). Nothing waits on purpose: a
callback alone is stored at once, and the wait grows only with the load, bounded by one
transaction. A batch the database refuses as a whole (a value out of range in one callback, a
conflict with a concurrent writer, too slow together) is stored again one callback at a time, so
that one bad callback costs only itself."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
import structlog
from prometheus_client import Histogram

from receiver import queries
from receiver.errors import DatabaseUnavailable, is_data_refusal, is_database_unavailable
from receiver.metrics import INGEST_BATCHES
from receiver.pipeline import Normalised, account_for, store_callback
from receiver.queries import CallbackToStore, Connection, IngestResult, RawCallback
from receiver.signal import Signal

log = structlog.get_logger("receiver.groupcommit")

Stored = tuple[IngestResult, str | None]  # what was stored, and the error kept on the raw row

Item = TypeVar("Item")
Result = TypeVar("Result")

# A batch that neither started nor ended for this long lets another writer start.
SPREAD_AFTER_S = 0.05


class _TooSlowTogether(Exception):
    """A batch took longer than a database call may: stored again one by one."""


# SQLSTATE class 40: the batch lost a conflict with a concurrent writer (deadlock,
# serialisation): one callback at a time, each waits its turn instead.
_CONFLICT_CLASS = "40"


@dataclass(slots=True)
class _Waiting(Generic[Item, Result]):
    item: Item
    answer: asyncio.Future[Result]


class Batcher(Generic[Item, Result]):
    """Runs `write` on batches of the items submitted while earlier batches were being written,
    each of at most `max_batch` items and, but for a single heavy item, `max_weight`. `write`
    answers each item, in order, with its result or the exception it raised.

    One writer at a time, so that batches are as large as the load makes them (the fewer the
    transactions, the less each item costs the database); a second and more, up to `writers`,
    only while half a batch is waiting or no batch has moved for SPREAD_AFTER_S (a transaction
    stuck on a lock must not hold everything behind it)."""

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]],
        *,
        writers: int,
        max_batch: int,
        max_weight: int | None = None,
        weight: Callable[[Item], int] = lambda item: 1,
        histogram: Histogram | None = None,
        max_queue: int | None = None,
    ) -> None:
        self._write = write
        self._max_queue = max_queue
        self._writers = writers
        self._max_batch = max_batch
        self._max_weight = max_weight
        self._weight = weight
        self._histogram = histogram
        self._queue: deque[_Waiting[Item, Result]] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._moved_at = time.monotonic()  # when a batch last started or ended

    async def submit(self, item: Item) -> Result:
        """The item's result once its batch is written; raises what writing it raised, or
        DatabaseUnavailable at once when `max_queue` items are waiting already (the database
        is not keeping up: no queue without end)."""
        if self._max_queue is not None and len(self._queue) >= self._max_queue:
            raise DatabaseUnavailable(f"{len(self._queue)} waiting to be stored: retry later")
        waiting = _Waiting[Item, Result](item, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        running = len(self._running)
        if running == 0 or (
            running < self._writers
            and (
                len(self._queue) >= self._max_batch // 2
                or time.monotonic() - self._moved_at > SPREAD_AFTER_S
            )
        ):
            self._running.add(asyncio.create_task(self._drain()))
        # Shielded: a caller that goes away does not take the batch down with it; its item is
        # written all the same.
        return await asyncio.shield(waiting.answer)

    async def close(self) -> None:
        """Waits for the batches being written."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._take()
                self._moved_at = time.monotonic()
                if self._histogram is not None:
                    self._histogram.observe(len(batch))
                try:
                    outcomes = await self._write([waiting.item for waiting in batch])
                except Exception as error:
                    outcomes = [error] * len(batch)
                except BaseException:  # cancelled: no one may wait forever for an answer
                    for waiting in batch:
                        waiting.answer.cancel()
                    if len(self._running) <= 1:  # no other writer will take what is queued
                        while self._queue:
                            self._queue.popleft().answer.cancel()
                    raise
                self._moved_at = time.monotonic()
                for waiting, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        waiting.answer.set_exception(outcome)
                    else:
                        waiting.answer.set_result(outcome)
        finally:
            # In the same step as finding the queue empty: an item queued from now on sees
            # a free writer and starts one.
            current = asyncio.current_task()
            if current is not None:
                self._running.discard(current)

    def _take(self) -> list[_Waiting[Item, Result]]:
        batch = [self._queue.popleft()]
        weight = self._weight(batch[0].item)
        while self._queue and len(batch) < self._max_batch:
            next_weight = self._weight(self._queue[0].item)
            if self._max_weight is not None and weight + next_weight > self._max_weight:
                break
            batch.append(self._queue.popleft())
            weight += next_weight
        return batch


class CallbackWriter:
    """Stores callbacks, those arriving together in one call and one transaction."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        signal: Signal,
        *,
        writers: int,
        max_batch: int,
        max_events: int,
        acquire_timeout_s: float,
        max_queue: int | None = None,
    ) -> None:
        self._pool = pool
        self._signal = signal
        self._acquire_timeout_s = acquire_timeout_s
        # A batch holds no more events than one callback may bring, so that it stays as quick
        # as the largest callback alone (the command timeout is sized for that).
        self._batcher = Batcher[tuple[RawCallback, Normalised], Stored](
            self._write,
            writers=writers,
            max_batch=max_batch,
            max_weight=max_events,
            weight=lambda item: max(1, len(item[1].events)),
            histogram=INGEST_BATCHES,
            max_queue=max_queue,
        )

    async def store(self, raw: RawCallback, normalised: Normalised) -> Stored:
        """Stores one callback (with whatever else is waiting) and returns its result once
        committed; raises what storing it raised. A caller that goes away does not stop it (the
        provider will retry it and find it a duplicate)."""
        return await self._batcher.submit((raw, normalised))

    async def close(self) -> None:
        await self._batcher.close()

    async def _write(self, batch: list[tuple[RawCallback, Normalised]]) -> list[Stored | Exception]:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout_s) as connection:
                outcomes = await self._store(connection, batch)
        except _TooSlowTogether:
            # On another connection: asyncpg may close the one whose call timed out.
            async with self._pool.acquire(timeout=self._acquire_timeout_s) as connection:
                outcomes = await self._one_by_one(connection, batch)
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
            except TimeoutError as error:
                log.warning("batch_stored_one_by_one", callbacks=len(batch), error=repr(error))
                raise _TooSlowTogether from error  # each alone may pass
            except asyncpg.PostgresError as error:
                # Refused data or a lost conflict: each alone may pass.
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
        return await self._one_by_one(connection, batch)

    async def _one_by_one(
        self, connection: Connection, batch: list[tuple[RawCallback, Normalised]]
    ) -> list[Stored | Exception]:
        async def store(item: tuple[RawCallback, Normalised]) -> Stored:
            return await store_callback(connection, *item)

        return await each_alone(batch, store)


async def each_alone(
    items: Sequence[Item], write_one: Callable[[Item], Awaitable[Result]]
) -> list[Result | Exception]:
    """Writes the items of a batch that failed as a whole one at a time, each answered with its
    result or the exception it raised. At the first sign that the database itself is stuck or
    gone, the rest get that answer at once: each would wait as long again."""
    answers: list[Result | Exception] = []
    for item in items:
        try:
            answers.append(await write_one(item))
        except Exception as error:
            if is_database_unavailable(error):
                return answers + [error] * (len(items) - len(answers))
            answers.append(error)
    return answers


def lost_conflict(error: asyncpg.PostgresError) -> bool:
    return str(error.sqlstate or "").startswith(_CONFLICT_CLASS)
