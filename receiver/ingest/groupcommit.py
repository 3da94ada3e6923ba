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

import asyncpg
import structlog

from receiver.ingest import pipeline
from receiver.judgement import Normalised
from receiver.metrics import INGEST_BATCHES
from receiver.storage import callbacks
from receiver.storage.batcher import Batcher, each_alone
from receiver.storage.callbacks import CallbackToStore, IngestResult, RawCallback
from receiver.storage.errors import is_data_refusal, lost_conflict
from receiver.storage.notify import Signal
from receiver.storage.pool import Connection, Database

log = structlog.get_logger("receiver.ingest.groupcommit")

Stored = tuple[IngestResult, str | None]  # what was stored, and the error kept on the raw row


class _TooSlowTogether(Exception):
    """A batch took longer than a database call may: stored again one by one."""


class CallbackWriter:
    """Stores callbacks, those arriving together in one call and one transaction."""

    def __init__(
        self,
        db: Database,
        signal: Signal,
        *,
        writers: int,
        max_batch: int,
        max_events: int,
        max_queue: int | None = None,
    ) -> None:
        self._db = db
        self._signal = signal
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
            async with self._db.connection() as connection:
                outcomes = await self._store(connection, batch)
        except _TooSlowTogether:
            # On another connection: asyncpg may close the one whose call timed out.
            async with self._db.connection() as connection:
                outcomes = await self._one_by_one(connection, batch)
        if any(not isinstance(o, Exception) and o[0].new_events for o in outcomes):
            self._signal.new_events()  # once per batch
        return outcomes

    async def _store(
        self, connection: Connection, batch: list[tuple[RawCallback, Normalised]]
    ) -> list[Stored | Exception]:
        if len(batch) > 1:
            try:
                results = await callbacks.ingest_callbacks(
                    connection,
                    [
                        CallbackToStore(
                            raw=raw,
                            outcome=normalised.outcome,
                            error=normalised.error,
                            events=normalised.events,
                            normalizer=normalised.normalizer,
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
                    callbacks.report_stored(raw.provider, normalised.events, result)
                    stored.append((result, normalised.error))
                return stored
        return await self._one_by_one(connection, batch)

    async def _one_by_one(
        self, connection: Connection, batch: list[tuple[RawCallback, Normalised]]
    ) -> list[Stored | Exception]:
        async def store_one(item: tuple[RawCallback, Normalised]) -> Stored:
            return await pipeline.store(connection, *item)

        return await each_alone(batch, store_one)
