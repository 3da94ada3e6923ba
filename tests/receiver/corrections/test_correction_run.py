"""Correcting history: a normaliser changed after the fact (CarrierX's "delivered" found to mean
only "handed on", a status word remapped), its dry run's exact diff, the applied correction, the
corrected events reaching a subscriber, nothing on a second run, and an apply stopped half way
resuming to the same end."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook

from normalizers import carrierx
from normalizers.base import CallbackRequest, ParseError
from normalizers.carrierx import CarrierX
from normalizers.events import Event, Status
from normalizers.registry import DEFAULT_REGISTRY
from receiver.config import Settings
from receiver.corrections.command import RunRequest, start_or_resume
from receiver.corrections.run import APPLY, DRY_RUN, Corrector, Tally
from receiver.judgement import normalizer_version
from tests.factories import attach_orphans, insert_message, with_override
from tests.receiver.delivery.test_delivery import (
    Client,
    Subscriber,
    eventually,
    subscribe,
)

ALICE = "+15162065574"
BOB = "+15162065576"
CAROL = "+15162065578"


async def carrierx_report(hub: Client, sid: str, to: str, word: str, second: int) -> None:
    response = await hub.post(
        "/callbacks/carrierx",
        json={
            "message_sid": sid,
            "status": word,
            "to": to.lstrip("+"),
            "direction": "outbound",
            "date_status_changed": f"2026-11-30T10:00:{second:02d}Z",
        },
    )
    assert response.status == 200, await response.text()


async def three_messages(hub: Client, db: asyncpg.Connection) -> dict[str, uuid.UUID]:
    """Alice: sent, then delivered; Bob: delivered; Carol: failed. Each a message of its own."""
    ids = {}
    for name, sid, to, words in (
        ("alice", "sid-a", ALICE, ["sent", "delivered"]),
        ("bob", "sid-b", BOB, ["delivered"]),
        ("carol", "sid-c", CAROL, ["failed"]),
    ):
        message_id = uuid.uuid4()
        await insert_message(db, message_id, "carrierx", provider_message_id=sid)
        for second, word in enumerate(words):
            await carrierx_report(hub, sid, to, word, second)
        await attach_orphans(db, message_id, "carrierx", sid, to)
        ids[name] = message_id
    return ids


def delivered_means_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fix, made once the reports are stored: CarrierX's "delivered" is read as `sent`."""
    monkeypatch.setitem(carrierx.STATUS_MAP, "delivered", Status.SENT)


def corrector(db: asyncpg.Connection, **changes: Any) -> Corrector:
    settings = Settings(database_url="postgresql://unused")
    return Corrector(
        **{
            "connection": db,
            "registry": DEFAULT_REGISTRY,
            "regions": {},
            "silence_s": settings.silence_timeout,
            "pause_ratio": 0.0,
            **changes,
        }
    )


async def a_run(db: asyncpg.Connection, mode: str) -> asyncpg.Record:
    run = await start_or_resume(
        db, DEFAULT_REGISTRY, RunRequest(None, None, None, mode, None), "test"
    )
    assert run is not None
    return run


async def recipients(db: asyncpg.Connection) -> dict[str, tuple[str, bool, int]]:
    rows = await db.fetch("SELECT recipient, status, final, sequence FROM message_recipients")
    return {row["recipient"]: (row["status"], row["final"], row["sequence"]) for row in rows}


async def test_a_dry_run_gives_the_exact_diff_and_changes_nothing(
    hub: Client, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = await three_messages(hub, db)
    delivered_means_sent(monkeypatch)
    before = await recipients(db)
    events_before = await db.fetchval("SELECT count(*) FROM events")
    lines: list[dict[str, Any]] = []

    run = await a_run(db, DRY_RUN)
    tally = await corrector(db, detail=lines.append).run(run)

    assert tally.counts() == {
        "examined": 4,
        "changed_callbacks": 2,
        "newly_parsed": 0,
        "now_unparsed": 0,
        "events": {
            "added": 0,
            "removed": 0,
            "changed": 2,
            "fields": {"status": 2},
            "replaced_by_version": {normalizer_version("carrierx", carrierx.PROVIDER): 2},
        },
        "recipients": {"delivered -> sent": 2},
    }
    assert sorted(tally.examples["delivered -> sent"]) == sorted(
        [str(messages["alice"]), str(messages["bob"])]
    )
    assert sorted(
        (line["changed"][0]["recipient"], line["changed"][0]["fields"]["status"]) for line in lines
    ) == [(ALICE, ["delivered", "sent"]), (BOB, ["delivered", "sent"])]
    assert sorted(
        (r["recipient"], r["from"], r["to"]) for line in lines for r in line["recipients"]
    ) == [(ALICE, "delivered", "sent"), (BOB, "delivered", "sent")]
    # Nothing changed, and the run is on record.
    assert await recipients(db) == before
    assert await db.fetchval("SELECT count(*) FROM events") == events_before
    assert await db.fetchval("SELECT count(*) FROM events WHERE replaced_by IS NOT NULL") == 0
    row = await db.fetchrow("SELECT mode, state, examined, counts FROM correction_runs")
    assert row is not None
    assert (row["mode"], row["state"], row["examined"]) == ("dry_run", "finished", 4)
    assert json.loads(row["counts"]) == tally.counts()


async def test_apply_corrects_tells_subscribers_and_a_second_run_changes_nothing(
    hub: Client, db: asyncpg.Connection, subscriber: Subscriber, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription = await subscribe(hub, subscriber.url)
    messages = await three_messages(hub, db)
    delivered_means_sent(monkeypatch)
    before = await recipients(db)
    assert before[ALICE] == ("delivered", True, 2)

    run = await a_run(db, APPLY)
    tally = await corrector(db).run(run)

    assert tally.counts()["recipients"] == {"delivered -> sent": 2}
    after = await recipients(db)
    assert after[ALICE] == ("sent", False, 3)  # moved back, and its sequence went on
    assert after[BOB] == ("sent", False, 2)
    assert after[CAROL] == before[CAROL]
    deadline = await db.fetchval(
        "SELECT deadline FROM message_recipients WHERE recipient = $1", ALICE
    )
    assert deadline is not None  # waiting again for a final report
    replaced = await db.fetch("SELECT id FROM events WHERE replaced_by = $1", run["id"])
    corrections = await db.fetch(
        "SELECT id, natural_id, status, recipient_status, sequence, correction FROM events"
        " WHERE correction IS NOT NULL ORDER BY recipient"
    )
    assert {row["natural_id"] for row in corrections} == {row["id"] for row in replaced}
    for row in corrections:
        correction = json.loads(row["correction"])
        assert correction == {"run": str(run["id"]), "replaces": row["natural_id"]}
        assert row["id"] != row["natural_id"]
        assert (row["status"], row["recipient_status"]) == ("sent", "sent")
    # The message's timeline shows what stands: Alice's sent, then the corrected report.
    timeline = await (await hub.get(f"/v1/messages/{messages['alice']}")).json()
    statuses = [event["status"] for event in timeline["events"]]
    assert statuses == ["sent", "sent"]
    assert timeline["events"][1]["correction"]["replaces"] == corrections[0]["natural_id"]

    # The subscriber receives the corrections, signed, marked as such.
    await eventually(lambda: len(subscriber.received) == 4 + 2)
    received = [
        Webhook(subscription["secret"]).verify(body, headers)
        for headers, body in subscriber.received
    ]
    marked = [event for event in received if event["correction"] is not None]
    assert sorted((e["recipient"], e["status"], e["correction"]["run"]) for e in marked) == [
        (ALICE, "sent", str(run["id"])),
        (BOB, "sent", str(run["id"])),
    ]

    # A provider retrying the old report changes nothing: it is still a duplicate.
    await carrierx_report(hub, "sid-b", BOB, "delivered", 0)
    assert (await recipients(db))[BOB] == ("sent", False, 2)

    # Run again: nothing left to change.
    events = await db.fetchval("SELECT count(*) FROM events")
    again = await corrector(db).run(await a_run(db, APPLY))
    assert again.changed_callbacks == 0
    assert not again.transitions
    assert await db.fetchval("SELECT count(*) FROM events") == events
    assert await recipients(db) == after

    # The fix undone: corrected back, the recipients delivered again.
    monkeypatch.undo()
    back = await corrector(db).run(await a_run(db, APPLY))
    assert back.counts()["recipients"] == {"sent -> delivered": 2}
    assert (await recipients(db))[ALICE] == ("delivered", True, 4)


class Crash(Exception):
    pass


async def test_an_apply_stopped_half_way_resumes_to_the_same_end(
    hub: Client, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await three_messages(hub, db)
    delivered_means_sent(monkeypatch)

    def crash_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Crash

    run = await a_run(db, APPLY)
    with pytest.raises(Crash):
        await corrector(db, batch_size=1, progress=crash_after_two).run(run)
    halfway = await db.fetchrow("SELECT state, examined, cursor FROM correction_runs")
    assert halfway is not None
    assert (halfway["state"], halfway["examined"]) == ("failed", 2)

    resumed = await a_run(db, APPLY)
    assert resumed["id"] == run["id"]
    assert resumed["cursor"] == halfway["cursor"]
    tally = await corrector(db, batch_size=1).run(resumed)

    assert tally.examined == 4
    assert tally.counts()["recipients"] == {"delivered -> sent": 2}
    assert await db.fetchval("SELECT state FROM correction_runs") == "finished"
    assert (await recipients(db))[ALICE] == ("sent", False, 3)
    assert (await recipients(db))[BOB] == ("sent", False, 2)
    assert await db.fetchval("SELECT count(*) FROM events WHERE correction IS NOT NULL") == 2
    assert await db.fetchval("SELECT count(*) FROM events WHERE replaced_by IS NOT NULL") == 2


def test_a_tally_reads_back_what_it_wrote() -> None:
    tally = Tally(examined=3, changed=1)
    tally.fields["status"] += 1
    tally.add_transition("delivered", "sent", "m-1")
    again = Tally.of_run(tally.counts(), tally.examples_json())
    assert again.counts() == tally.counts()
    assert again.examples == {"delivered -> sent": ["m-1"]}


class RenamedCarrierX(CarrierX):
    """A fix that changes how a report is identified: every event under a new id."""

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        events = super().parse_callback(request, received_at)
        return [dataclasses.replace(event, id=event.id + "v2") for event in events]


class BrokenCarrierX(CarrierX):
    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        raise ParseError("a fix that broke the format")


async def test_events_under_new_ids_replace_the_old_ones_of_the_same_recipient(
    hub: Client, db: asyncpg.Connection
) -> None:
    await three_messages(hub, db)
    before = await recipients(db)
    old_ids = {row["id"] for row in await db.fetch("SELECT id FROM events")}
    registry = with_override(DEFAULT_REGISTRY, RenamedCarrierX())

    run = await a_run(db, APPLY)
    tally = await corrector(db, registry=registry).run(run)

    assert (tally.added, tally.removed, tally.changed) == (4, 4, 0)
    assert not tally.transitions  # the same statuses, under other ids
    rows = await db.fetch(
        "SELECT id, natural_id, correction FROM events WHERE correction IS NOT NULL"
    )
    assert {row["id"] for row in rows} == {i + "v2" for i in old_ids}  # the normaliser's ids
    assert {json.loads(row["correction"])["replaces"] for row in rows} == old_ids
    after = await recipients(db)
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}
    assert after[ALICE][2] == before[ALICE][2] + 2  # each added event a step of its own
    again = await corrector(db, registry=registry).run(await a_run(db, APPLY))
    assert again.changed_callbacks == 0


async def test_callbacks_the_normaliser_no_longer_reads_are_left_as_they_were(
    hub: Client, db: asyncpg.Connection
) -> None:
    await three_messages(hub, db)
    before = await recipients(db)

    registry = with_override(DEFAULT_REGISTRY, BrokenCarrierX())
    tally = await corrector(db, registry=registry).run(await a_run(db, APPLY))

    assert (tally.examined, tally.now_unparsed, tally.changed_callbacks) == (4, 4, 0)
    assert await recipients(db) == before
    assert await db.fetchval("SELECT count(*) FROM events WHERE replaced_by IS NOT NULL") == 0
