"""Normalise `unparsed` raw callbacks again, after a normaliser learnt their format."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web

from normalizers.registry import Registry
from receiver.context import AppContext
from receiver.http import params
from receiver.http.errors import NotFound
from receiver.judgement import judge
from receiver.storage import callbacks
from receiver.storage.callbacks import NORMALISED, RawCallback, describe_storage_error
from receiver.storage.errors import is_data_refusal
from receiver.storage.pool import Connection


@dataclass(slots=True)
class ReprocessReport:
    examined: int = 0
    normalised: int = 0
    still_unparsed: int = 0
    new_events: int = 0
    lines: list[str] = field(default_factory=list)


async def reprocess(
    connection: asyncpg.Connection,
    registry: Registry,
    *,
    provider: str | None = None,
    dry_run: bool = False,
    batch_size: int = 200,
    emit: Callable[[str], None] = lambda line: None,
    regions: Mapping[str, str] | None = None,
) -> ReprocessReport:
    """Walks the unparsed rows in id order, one short transaction per row (so that it never holds
    many recipients' locks while live callbacks wait); a row another run holds is skipped. A dry
    run reads only, and writes nothing."""
    report = ReprocessReport()
    after: uuid.UUID | None = None
    while True:
        batch = await callbacks.unparsed_ids(connection, provider, after, batch_size)
        for raw_id in batch:
            if dry_run:
                line = await _reprocess_id(
                    connection, registry, raw_id, dry_run, report, regions or {}
                )
            else:
                async with connection.transaction():
                    line = await _reprocess_id(
                        connection, registry, raw_id, dry_run, report, regions or {}
                    )
            if line is not None:
                report.lines.append(line)
                emit(line)
        if len(batch) < batch_size:
            return report
        after = batch[-1]


async def reprocess_one(
    connection: Connection,
    registry: Registry,
    raw_id: uuid.UUID,
    regions: Mapping[str, str] | None = None,
) -> ReprocessReport | None:
    """One unparsed raw callback normalised again, in a transaction of its own; None when there
    is no such unparsed callback (or another run holds it)."""
    report = ReprocessReport()
    async with connection.transaction():
        line = await _reprocess_id(connection, registry, raw_id, False, report, regions or {})
    if line is None:
        return None
    report.lines.append(line)
    return report


async def reprocess_callback(request: web.Request) -> web.Response:
    """POST /v1/raw-callbacks/{id}/reprocess: an unparsed callback normalised again with
    today's normalisers (after a fix), as `sms-receiver reprocess` does for all of them."""
    context: AppContext = request.app[AppContext.KEY]
    raw_id = params.uuid_or_none(request.match_info["id"])
    if raw_id is None:
        raise NotFound("no such unparsed raw callback")
    async with context.db.connection() as connection:
        report = await reprocess_one(
            connection, context.registry, raw_id, context.settings.regions()
        )
    if report is None:
        raise NotFound("no such unparsed raw callback (normalised already, or being reprocessed)")
    if report.new_events:
        context.signal.new_events()  # subscribers and streams hear of them at once
    return web.json_response(
        {
            "id": str(raw_id),
            "outcome": "normalised" if report.normalised else "unparsed",
            "new_events": report.new_events,
            "result": report.lines[0],
        }
    )


async def _reprocess_id(
    connection: Connection,
    registry: Registry,
    raw_id: uuid.UUID,
    dry_run: bool,
    report: ReprocessReport,
    regions: Mapping[str, str],
) -> str | None:
    raw = await callbacks.unparsed_callback(connection, raw_id, lock=not dry_run)
    if raw is None:
        return None  # normalised meanwhile, or held by another run
    return await _reprocess_one(connection, registry, raw, dry_run, report, regions)


async def _reprocess_one(
    connection: Connection,
    registry: Registry,
    raw: RawCallback,
    dry_run: bool,
    report: ReprocessReport,
    regions: Mapping[str, str],
) -> str:
    report.examined += 1
    label = f"{raw.id} {raw.provider}"
    # Authentication was checked when the callback arrived; only parsing failed then. No limit
    # on the number of events: no provider is waiting.
    result = judge(registry, raw, region=regions.get(raw.provider))
    if result.outcome != NORMALISED:
        report.still_unparsed += 1
        if not dry_run and result.error:
            await callbacks.set_raw_error(connection, raw.id, result.error)
        return f"{label}: still unparsed: {result.error}"
    if dry_run:
        known = await callbacks.existing_event_ids(connection, [e.id for e in result.events])
        fresh = len(result.events) - len(known)
        report.normalised += 1
        report.new_events += fresh
        return f"{label}: would normalise into {len(result.events)} events ({fresh} new)"
    try:
        async with connection.transaction():  # a savepoint: one refused row spoils no other
            stored = await callbacks.ingest_events(
                connection,
                raw.id,
                outcome=NORMALISED,
                error=None,
                events=result.events,
                normalizer=result.normalizer,
            )
    except asyncpg.PostgresError as error:
        if not is_data_refusal(error):
            raise
        report.still_unparsed += 1
        reason = describe_storage_error(error)
        await callbacks.set_raw_error(connection, raw.id, reason)
        return f"{label}: still unparsed: {reason}"
    callbacks.report_stored(raw.provider, result.events, stored)
    fresh = len(stored.new_events)
    report.normalised += 1
    report.new_events += fresh
    return f"{label}: {stored.outcome} into {len(result.events)} events ({fresh} new)"
