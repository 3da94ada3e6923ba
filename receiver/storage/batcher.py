"""Batches of work written together: whatever is submitted while a batch is being written goes
into the next one, so that one transaction (one round trip, one commit flush) serves many
callers. Used by the callback writer (group commit) and by the dispatcher's attempt recorder."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Histogram

from receiver.storage.errors import DatabaseUnavailable, is_database_unavailable

Item = TypeVar("Item")
Result = TypeVar("Result")

# A batch that neither started nor ended for this long lets another writer start.
SPREAD_AFTER_S = 0.05


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
