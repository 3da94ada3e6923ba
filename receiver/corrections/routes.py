"""/v1/correction-runs (operator keys only): correction runs listed, started (a dry run first,
then its apply), followed and stopped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from receiver.context import AppContext
from receiver.corrections.background import RUNS, AnotherApply
from receiver.corrections.command import RunRequest
from receiver.corrections.run import APPLY, DRY_RUN
from receiver.http import params
from receiver.http.apikeys import who_of
from receiver.http.bodies import read_model
from receiver.http.errors import Conflict, NotFound, Unprocessable
from receiver.http.fields import Moment, ProviderName
from receiver.storage import corrections


class CorrectionRunIn(BaseModel):
    """A run over the raw callbacks received in [since, until) (until: now) of one provider or
    of all."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["dry_run", "apply"] = "dry_run"
    provider: ProviderName | None = None
    since: Moment | None = Field(
        default=None,
        description="null: from the first; a window ending before it begins holds nothing",
    )
    until: Moment | None = Field(
        default=None,
        description="null, or a time to come: when the run starts (the window is fixed then, and"
        " the run shows it)",
    )


class CorrectionRunView(BaseModel):
    id: str
    mode: Literal["dry_run", "apply"]
    state: Literal["running", "finished", "stopped", "failed"]
    started_by: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    provider: str | None
    since: datetime | None
    until: datetime
    versions: dict[str, str]  # the normaliser version of each provider the run read with
    total: int  # raw callbacks in the window when it started
    examined: int
    # events added/removed/changed (by field), recipients' status changes ("from -> to": n)
    counts: dict[str, Any]
    examples: list[dict[str, Any]]  # per status change, up to 5 message ids
    error: str | None


class CorrectionRunList(BaseModel):
    data: list[CorrectionRunView]


class ApplyingAlready(Conflict):
    code = "correction_running"


def run_json(row: asyncpg.Record) -> dict[str, Any]:
    def moment(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": str(row["id"]),
        "mode": row["mode"],
        "state": row["state"],
        "started_by": row["started_by"],
        "started_at": moment(row["started_at"]),
        "updated_at": moment(row["updated_at"]),
        "finished_at": moment(row["finished_at"]),
        "provider": row["provider"],
        "since": moment(row["since"]),
        "until": moment(row["until"]),
        "versions": json.loads(row["versions"]),
        "total": row["total"],
        "examined": row["examined"],
        "counts": json.loads(row["counts"]),
        "examples": json.loads(row["examples"]),
        "error": row["error"],
    }


async def list_all(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    limit = params.limit(request)
    async with context.db.connection() as connection:
        rows = await corrections.list_runs(connection, limit)
    return web.json_response({"data": [run_json(row) for row in rows]})


async def get_one(request: web.Request) -> web.Response:
    return web.json_response(run_json(await _the_run(request)))


async def start(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    incoming = await read_model(request, CorrectionRunIn)
    problems = []
    if incoming.provider is not None and incoming.provider not in context.registry:
        problems.append(
            {"field": "provider", "error": f"one of {', '.join(sorted(context.registry))}"}
        )
    if problems:
        raise Unprocessable("the correction run cannot be started", details=problems)
    # The window is fixed when the run starts, so that an apply of a dry run's window sees
    # the callbacks the dry run saw: a time to come is now.
    now = datetime.now(UTC)
    until = incoming.until if incoming.until is None or incoming.until <= now else now
    run = await _start(
        request,
        RunRequest(incoming.provider, incoming.since, until, incoming.mode, None),
    )
    return web.json_response(run_json(run), status=202)


async def apply_dry_run(request: web.Request) -> web.Response:
    """The apply of a finished dry run's window, exactly (the console's "Apply" after it)."""
    dry = await _the_run(request)
    if dry["mode"] != DRY_RUN or dry["state"] != "finished":
        raise Conflict("only a finished dry run can be applied")
    run = await _start(
        request, RunRequest(dry["provider"], dry["since"], dry["until"], APPLY, None)
    )
    return web.json_response(run_json(run), status=202)


async def stop(request: web.Request) -> web.Response:
    run = await _the_run(request)
    if run["state"] != "running":
        raise Conflict(f"the run is {run['state']}, not running")
    if not request.app[RUNS].stop(run["id"]):
        raise Conflict("the run is not running in this instance: stop it where it runs")
    return web.json_response(run_json(run), status=202)


async def _start(request: web.Request, run_request: RunRequest) -> asyncpg.Record:
    context = request.app[AppContext.KEY]
    try:
        return await request.app[RUNS].start(context, run_request, who_of(request))
    except AnotherApply:
        raise ApplyingAlready(
            "another correction run is applying now: wait for it to end, or stop it"
        ) from None


async def _the_run(request: web.Request) -> asyncpg.Record:
    context = request.app[AppContext.KEY]
    run_id = params.uuid_or_none(request.match_info["id"])
    row = None
    if run_id is not None:
        async with context.db.connection() as connection:
            row = await corrections.get_run(connection, run_id)
    if row is None:
        raise NotFound("no such correction run")
    return row
