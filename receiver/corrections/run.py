"""A correction run: the raw callbacks of a window read again with today's normalisers, in
batches. A dry run does each batch's work in a transaction it rolls back (so what it reports is
exactly what an apply would do, and nothing stays); an apply commits each batch with the run's
cursor, so a run stopped anywhere resumes after its last batch and a second run finds nothing
left to change. Between batches it pauses as long as the batch took: live callbacks waiting for
a recipient it holds wait one short batch at most, and it never takes more than half the time."""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from normalizers.events import Event, event_id
from normalizers.registry import Registry
from receiver.corrections.diff import CallbackDiff, Standing, compare
from receiver.judgement import judge, normalizer_version
from receiver.storage import corrections as store
from receiver.storage.callbacks import NORMALISED, RawCallback, stored_form
from receiver.storage.events import event_json

log = structlog.get_logger("receiver.corrections")

DRY_RUN = "dry_run"
APPLY = "apply"
EXAMPLES_PER_CHANGE = 5
# How long a batch waits for a recipient a live callback holds before it steps back and tries
# again after a pause: the run yields, the callback does not wait on it.
LOCK_TIMEOUT = "2s"
LOCK_RETRIES = 20


@dataclass(frozen=True, slots=True)
class Window:
    provider: str | None
    since: datetime | None
    until: datetime


@dataclass(slots=True)
class Tally:
    """What a run found (a dry run) or did (an apply), kept with the run as JSON."""

    examined: int = 0
    changed_callbacks: int = 0
    newly_parsed: int = 0  # unparsed when stored, read now
    now_unparsed: int = 0  # read when stored, not now: left as they were
    added: int = 0
    removed: int = 0
    changed: int = 0
    fields: Counter[str] = field(default_factory=Counter)
    transitions: Counter[str] = field(default_factory=Counter)  # "delivered -> sent"
    # The normaliser versions that made the events replaced (changed or removed).
    replaced_versions: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # transition: message ids

    def counts(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "changed_callbacks": self.changed_callbacks,
            "newly_parsed": self.newly_parsed,
            "now_unparsed": self.now_unparsed,
            "events": {
                "added": self.added,
                "removed": self.removed,
                "changed": self.changed,
                "fields": dict(sorted(self.fields.items())),
                "replaced_by_version": dict(sorted(self.replaced_versions.items())),
            },
            "recipients": dict(sorted(self.transitions.items())),
        }

    def examples_json(self) -> list[dict[str, Any]]:
        return [
            {"transition": name, "message_ids": ids} for name, ids in sorted(self.examples.items())
        ]

    @classmethod
    def of_run(cls, counts: Mapping[str, Any], examples: Sequence[Mapping[str, Any]]) -> Tally:
        events = counts.get("events", {})
        return cls(
            examined=counts.get("examined", 0),
            changed_callbacks=counts.get("changed_callbacks", 0),
            newly_parsed=counts.get("newly_parsed", 0),
            now_unparsed=counts.get("now_unparsed", 0),
            added=events.get("added", 0),
            removed=events.get("removed", 0),
            changed=events.get("changed", 0),
            fields=Counter(events.get("fields", {})),
            replaced_versions=Counter(events.get("replaced_by_version", {})),
            transitions=Counter(counts.get("recipients", {})),
            examples={item["transition"]: list(item["message_ids"]) for item in examples},
        )

    def add_transition(self, before: str, after: str, message_id: str | None) -> None:
        name = f"{before} -> {after}"
        self.transitions[name] += 1
        kept = self.examples.setdefault(name, [])
        if message_id is not None and len(kept) < EXAMPLES_PER_CHANGE and message_id not in kept:
            kept.append(message_id)

    def summary(self, mode: str) -> list[str]:
        would = "would be " if mode == DRY_RUN else ""
        lines = [
            f"{self.examined} raw callbacks read again: {self.changed_callbacks} {would}corrected"
            f" ({self.newly_parsed} unparsed before), {self.now_unparsed} no longer readable"
            " (left as they were)",
            f"events {would}added {self.added}, removed {self.removed}, changed {self.changed}"
            + (
                " (" + ", ".join(f"{name} {n}" for name, n in sorted(self.fields.items())) + ")"
                if self.fields
                else ""
            ),
        ]
        if self.replaced_versions:
            made = ", ".join(f"{name} {n}" for name, n in sorted(self.replaced_versions.items()))
            lines.append(f"the events {would}replaced were made by: {made}")
        if self.transitions:
            lines.append(f"recipients whose status {would}changed:")
            for name, count in sorted(self.transitions.items(), key=lambda item: -item[1]):
                examples = ", ".join(self.examples.get(name, []))
                lines.append(f"  {name}: {count}" + (f" (e.g. {examples})" if examples else ""))
        else:
            lines.append(f"no recipient's status {would}changed")
        return lines


def versions_of(registry: Registry) -> dict[str, str]:
    return {name: normalizer_version(name, provider) for name, provider in registry.items()}


@dataclass
class Corrector:
    """Runs one correction run on its own connection (never the ingest pool's)."""

    connection: asyncpg.Connection
    registry: Registry
    regions: Mapping[str, str]
    silence_s: Callable[[str], float]
    batch_size: int = 100
    pause_ratio: float = 1.0
    detail: Callable[[dict[str, Any]], None] = lambda line: None
    progress: Callable[[int, int], None] = lambda done, total: None
    wake: Callable[[], None] = lambda: None

    async def run(self, run: asyncpg.Record, stop: asyncio.Event | None = None) -> Tally:
        """Walks the run's window from its cursor to its end; returns what it found or did.
        When `stop` is set it ends after the batch in hand (state `stopped`)."""
        run_id: uuid.UUID = run["id"]
        mode: str = run["mode"]
        window = Window(run["provider"], run["since"], run["until"])
        tally = Tally.of_run(_json(run["counts"]), _json(run["examples"]))
        cursor: uuid.UUID | None = run["cursor"]
        total: int = run["total"]
        await self.connection.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        try:
            while True:
                if stop is not None and stop.is_set():
                    await store.end_run(self.connection, run_id, "stopped")
                    return tally
                batch = await store.window_batch(
                    self.connection,
                    window.provider,
                    window.since,
                    window.until,
                    cursor,
                    self.batch_size,
                )
                if not batch:
                    break
                started = time.monotonic()
                wrote, tally = await self._batch_with_retries(run_id, mode, batch, tally)
                cursor = batch[-1][0].id
                if wrote and mode == APPLY:
                    self.wake()
                self.progress(tally.examined, total)
                if len(batch) < self.batch_size:
                    break
                await asyncio.sleep((time.monotonic() - started) * self.pause_ratio)
        except (asyncio.CancelledError, KeyboardInterrupt):
            await _end_quietly(self.connection, run_id, "stopped", None)
            raise
        except Exception as error:
            await _end_quietly(
                self.connection, run_id, "failed", f"{type(error).__name__}: {error}"
            )
            raise
        await store.end_run(self.connection, run_id, "finished")
        return tally

    async def _batch_with_retries(
        self,
        run_id: uuid.UUID,
        mode: str,
        batch: list[tuple[RawCallback, str]],
        tally: Tally,
    ) -> tuple[bool, Tally]:
        """The batch done (and kept, for an apply, with the run's progress in the same
        transaction); what the run has found so far with it."""
        for attempt in range(LOCK_RETRIES):
            trial = copy.deepcopy(tally)
            transaction = self.connection.transaction()
            await transaction.start()
            try:
                wrote = await self._batch(run_id, batch, trial)
                if mode == APPLY:
                    await self._record(run_id, batch, trial)
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
                await transaction.rollback()
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
                continue
            except BaseException:
                await transaction.rollback()
                raise
            if mode == APPLY:
                await transaction.commit()
            else:
                await transaction.rollback()
                await self._record(run_id, batch, trial)
            return wrote, trial
        raise RuntimeError(
            f"live callbacks held the batch's recipients through {LOCK_RETRIES} tries"
        )

    async def _record(
        self, run_id: uuid.UUID, batch: list[tuple[RawCallback, str]], tally: Tally
    ) -> None:
        await store.record_progress(
            self.connection,
            run_id,
            examined=tally.examined,
            cursor=batch[-1][0].id,
            counts=tally.counts(),
            examples=tally.examples_json(),
        )

    async def _batch(
        self, run_id: uuid.UUID, batch: list[tuple[RawCallback, str]], tally: Tally
    ) -> bool:
        raws = [raw for raw, _ in batch]
        rows = await store.standing_events(
            self.connection, [raw.id for raw in raws], min(raw.received_at for raw in raws)
        )
        standing: dict[uuid.UUID, list[Standing]] = {raw.id: [] for raw in raws}
        for row in rows:
            standing[row["raw_id"]].append(
                Standing(
                    id=row["id"],
                    natural=row["natural"],
                    recipient_id=row["recipient_id"],
                    fields=event_json(row),
                    normalizer=row["normalizer"],
                )
            )
        derived: dict[uuid.UUID, list[Event] | None] = {}
        versions: dict[uuid.UUID, str | None] = {}
        for raw in raws:
            result = judge(self.registry, raw, region=self.regions.get(raw.provider))
            derived[raw.id] = result.events if result.outcome == NORMALISED else None
            versions[raw.id] = result.normalizer
        naturals = sorted({e.id for events in derived.values() for e in events or []})
        taken, standing_anywhere = (
            await store.known_ids(self.connection, naturals) if naturals else (set(), set())
        )
        diffs: list[tuple[RawCallback, str, CallbackDiff]] = []
        for raw, outcome in batch:
            tally.examined += 1
            events = derived[raw.id]
            if events is None:
                if standing[raw.id]:
                    tally.now_unparsed += 1
                continue
            diff = compare(standing[raw.id], events, standing_anywhere)
            if not diff.empty:
                diffs.append((raw, outcome, diff))
        if not diffs:
            return False

        replaced = [old for _, _, diff in diffs for old in diff.removed]
        replaced += [change.old for _, _, diff in diffs for change in diff.changed]
        held = sorted({old.recipient_id for old in replaced if old.recipient_id is not None})
        await store.lock_recipients(self.connection, held)
        added_keys = [
            (event.provider, event.provider_message_id, event.recipient or "")
            for _, _, diff in diffs
            for event, _ in diff.added
            if event.provider_message_id is not None
        ]
        # As they stand before store_events moves them forward with the corrections.
        before = await store.recipient_statuses(self.connection, held, added_keys)
        await store.replace_events(self.connection, [old.id for old in replaced], run_id)
        corrections: list[dict[str, Any]] = []
        for raw, _, diff in diffs:
            for change in diff.changed:
                corrections.append(
                    _correction(change.new, raw, run_id, change.old.id, taken, versions[raw.id])
                )
            for event, replaces in diff.added:
                corrections.append(
                    _correction(event, raw, run_id, replaces, taken, versions[raw.id])
                )
        raw_of_correction = {c["id"]: uuid.UUID(c["raw_id"]) for c in corrections}
        landed = await store.store_corrections(self.connection, corrections) if corrections else {}
        with_new_events = {rid for rid in landed.values() if rid is not None}
        providers = {old.recipient_id: str(old.fields["provider"]) for old in replaced}
        providers.update(
            {landed[c["id"]]: c["provider"] for c in corrections if landed.get(c["id"])}
        )
        now = datetime.now(UTC)
        moved: dict[int, dict[str, Any]] = {}
        folded = sorted(set(held) | with_new_events)
        for row in await store.refold(
            self.connection,
            folded,
            [now + timedelta(seconds=self.silence_s(providers.get(rid, ""))) for rid in folded],
            [rid not in with_new_events for rid in folded],
        ):
            step = dict(row)
            step["before_status"] = before.get(row["recipient_id"], row["before_status"])
            if step["before_status"] != step["after_status"]:
                moved[row["recipient_id"]] = step
        for step in moved.values():
            message_id = str(step["message_id"]) if step["message_id"] else None
            tally.add_transition(step["before_status"], step["after_status"], message_id)
        for raw, outcome, diff in diffs:
            tally.changed_callbacks += 1
            tally.added += len(diff.added)
            tally.removed += len(diff.removed)
            tally.changed += len(diff.changed)
            for change in diff.changed:
                tally.fields.update(change.fields.keys())
            tally.replaced_versions.update(
                old.normalizer or "unknown (before versions were kept)"
                for old in [*diff.removed, *(change.old for change in diff.changed)]
            )
            if outcome == "unparsed":
                tally.newly_parsed += 1
                await store.mark_normalised(self.connection, raw.id, len(diff.added))
            mine = {old.recipient_id for old in diff.removed}
            mine |= {change.old.recipient_id for change in diff.changed}
            mine |= {rid for eid, rid in landed.items() if raw_of_correction.get(eid) == raw.id}
            self.detail(_detail_line(raw, diff, [row for rid, row in moved.items() if rid in mine]))
        return True


def _correction(
    event: Event,
    raw: RawCallback,
    run_id: uuid.UUID,
    replaces: str | None,
    taken: set[str],
    normalizer: str | None,
) -> dict[str, Any]:
    """A re-derived event as store_events takes it: under the normaliser's id when no row
    holds that id yet (so a provider's retry of the report is still a duplicate), else under
    one of its own; the normaliser's id kept as its natural id."""
    natural = event.id
    serialised = stored_form(event, normalizer)
    serialised["id"] = natural if natural not in taken else event_id("correction", run_id, natural)
    serialised["natural_id"] = natural
    serialised["correction"] = {"run": str(run_id), "replaces": replaces}
    serialised["raw_id"] = str(raw.id)
    return serialised


def _detail_line(
    raw: RawCallback, diff: CallbackDiff, moved: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    return {
        "raw_id": str(raw.id),
        "provider": raw.provider,
        "received_at": raw.received_at.isoformat(),
        "added": [
            {
                "id": event.id,
                "type": str(event.type),
                "recipient": event.recipient,
                "status": str(event.status),
                "replaces": replaces,
            }
            for event, replaces in diff.added
        ],
        "removed": [
            {
                "id": old.id,
                "recipient": old.fields.get("recipient"),
                "status": old.fields["status"],
                "normalizer": old.normalizer,
            }
            for old in diff.removed
        ],
        "changed": [
            {
                "id": change.old.id,
                "recipient": change.old.fields.get("recipient"),
                "normalizer": change.old.normalizer,
                "fields": {name: list(values) for name, values in change.fields.items()},
            }
            for change in diff.changed
        ],
        "recipients": [
            {
                "message_id": str(row["message_id"]) if row["message_id"] else None,
                "recipient": row["recipient"],
                "from": row["before_status"],
                "to": row["after_status"],
            }
            for row in moved
        ],
    }


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _end_quietly(
    connection: asyncpg.Connection, run_id: uuid.UUID, state: str, error: str | None
) -> None:
    try:
        await store.end_run(connection, run_id, state, error)
    except Exception as failure:  # the connection itself may be what failed
        log.warning("correction_run_end_not_recorded", run=str(run_id), error=repr(failure))
