"""Storing a callback as judged (`receiver.judgement`: the one judgement of a raw callback)."""

from __future__ import annotations

from receiver.judgement import Normalised
from receiver.storage.callbacks import (
    IngestResult,
    RawCallback,
    store_callback,
)
from receiver.storage.pool import Connection


async def store(
    connection: Connection, raw: RawCallback, normalised: Normalised
) -> tuple[IngestResult, str | None]:
    """Stores the callback as judged, alone (see `storage.callbacks.store_callback`)."""
    return await store_callback(
        connection,
        raw,
        outcome=normalised.outcome,
        error=normalised.error,
        events=normalised.events,
        normalizer=normalised.normalizer,
    )
