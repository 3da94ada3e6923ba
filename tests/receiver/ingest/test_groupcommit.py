"""Group commit: callbacks arriving together are stored in one transaction, and each is still
answered with its own result; one bad callback in a batch costs only itself."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import structlog.testing
from aiohttp.test_utils import TestClient

from normalizers.base import CallbackRequest
from normalizers.carrierx import CarrierX
from normalizers.events import Event, EventType, Status, event_id
from normalizers.registry import DEFAULT_REGISTRY
from receiver.config import Settings
from receiver.ingest import pipeline
from receiver.ingest.groupcommit import CallbackWriter
from receiver.judgement import Normalised
from receiver.metrics import INGEST_BATCHES
from receiver.storage import callbacks
from receiver.storage.batcher import SPREAD_AFTER_S, Batcher
from receiver.storage.errors import DatabaseUnavailable
from receiver.storage.notify import Signal
from receiver.storage.pool import open_database
from tests.corpus import FIXTURES as CORPUS
from tests.factories import with_override

FIXTURES = CORPUS / "carrierx"
Client = TestClient[Any, Any]
MOMENT = datetime(2024, 6, 14, tzinfo=UTC)


def report(sid: str, status: str = "delivered") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "outbound_delivered.json").read_text())
    body: dict[str, Any] = data["request"]["body"]
    return body | {"message_sid": sid, "status": status}


def batches_observed() -> tuple[float, float]:
    """(transactions, callbacks) counted by the batch histogram so far."""
    samples = {s.name: s.value for metric in INGEST_BATCHES.collect() for s in metric.samples}
    return samples["smsr_ingest_batch_callbacks_count"], samples["smsr_ingest_batch_callbacks_sum"]


async def post(client: Client, payload: object) -> tuple[int, dict[str, Any]]:
    response = await client.post("/callbacks/carrierx", json=payload)
    return response.status, await response.json()


@pytest.fixture
def settings(dsn: str) -> Settings:
    # One writer: everything that arrives while it works forms the next batch.
    return Settings(database_url=dsn, db_pool_min_size=0, db_pool_max_size=5, ingest_writers=1)


async def test_concurrent_callbacks_share_transactions_and_get_their_own_answers(
    client: Client, db: asyncpg.Connection
) -> None:
    transactions_before, callbacks_before = batches_observed()
    payloads = [report(f"sid-{n}") for n in range(40)] + [report("sid-0")] * 5

    answers = await asyncio.gather(*(post(client, payload) for payload in payloads))

    transactions_after, callbacks_after = batches_observed()
    assert callbacks_after - callbacks_before == 45
    assert transactions_after - transactions_before < 45  # some were stored together
    assert all(status == 200 for status, _ in answers)
    first_report = [
        answer
        for (_, answer), p in zip(answers, payloads, strict=True)
        if p["message_sid"] == "sid-0"
    ]
    assert sorted(a["status"] for a in first_report) == ["duplicate"] * 5 + ["normalised"]
    assert sorted(a["events"] for a in first_report) == [0] * 5 + [1]
    rows = await db.fetch("SELECT id, outcome, event_count FROM raw_callbacks")
    stored = {str(row["id"]): (row["outcome"], row["event_count"]) for row in rows}
    assert stored == {a["raw_id"]: (a["status"], a["events"]) for _, a in answers}
    events = await db.fetch("SELECT provider_message_id, raw_id, sequence FROM events")
    assert len(events) == 40
    by_sid = {e["provider_message_id"]: str(e["raw_id"]) for e in events}
    for (_, answer), payload in zip(answers, payloads, strict=True):
        if answer["status"] == "normalised":
            assert by_sid[payload["message_sid"]] == answer["raw_id"]
    assert await db.fetchval("SELECT count(*) FROM message_recipients") == 40


async def test_reports_of_one_recipient_in_one_batch_keep_their_order(
    client: Client, db: asyncpg.Connection
) -> None:
    statuses = ["queued", "sent", "delivered"]
    answers = await asyncio.gather(
        *(post(client, report("sid-ordered", status)) for status in statuses)
    )

    assert [status for status, _ in answers] == [200, 200, 200]
    rows = await db.fetch("SELECT status, sequence FROM events ORDER BY sequence")
    assert [row["sequence"] for row in rows] == [1, 2, 3]
    assert await db.fetchval("SELECT status FROM message_recipients") == "delivered"


class OverflowingOne(CarrierX):
    """Reports a segment count Postgres cannot hold, for one message id only."""

    def parse_callback(self, request: CallbackRequest, received_at: datetime) -> list[Event]:
        events = super().parse_callback(request, received_at)
        return [
            dataclasses.replace(event, segments=10**12)
            if event.provider_message_id == "sid-bad"
            else event
            for event in events
        ]


@pytest.mark.parametrize("registry", [with_override(DEFAULT_REGISTRY, OverflowingOne())])
async def test_a_callback_the_database_refuses_costs_only_itself(
    client: Client, db: asyncpg.Connection
) -> None:
    payloads = [report(f"sid-{n}") for n in range(10)] + [report("sid-bad")]
    with structlog.testing.capture_logs() as logs:
        answers = await asyncio.gather(*(post(client, payload) for payload in payloads))

    assert [status for status, _ in answers] == [200] * 10 + [202]
    assert answers[-1][1]["error"].startswith("storage error")
    assert any(entry["event"] == "batch_stored_one_by_one" for entry in logs)
    assert await db.fetchval("SELECT count(*) FROM events") == 10
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 11
    assert (
        await db.fetchval(
            "SELECT outcome FROM raw_callbacks WHERE id = $1", uuid.UUID(answers[-1][1]["raw_id"])
        )
        == "unparsed"
    )


def raw_callback(raw_id: uuid.UUID | None = None) -> callbacks.RawCallback:
    return callbacks.RawCallback(
        id=raw_id or uuid.uuid4(),
        provider="batch",
        method="POST",
        path="/callbacks/batch",
        query="a=\x00b",
        headers=[("X-Nul", "a\x00b"), ("X-Nul", "second")],
        body=b"\x00{}",
        remote_addr="127.0.0.1",
        received_at=MOMENT,
    )


def inbound(sid: str) -> Event:
    return Event(
        id=event_id("batch", "inbound", sid),
        type=EventType.INBOUND,
        provider="batch",
        status=Status.RECEIVED,
        provider_status="received",
        occurred_at=MOMENT,
        received_at=MOMENT,
        occurred_at_source="provider",
        provider_message_id=sid,
        recipient="+15550000001",
        sender="+15550000002",
        text="hi\x00there",
    )


async def test_ingest_callbacks_stores_each_raw_row_with_its_own_outcome(
    db: asyncpg.Connection,
) -> None:
    replayed = raw_callback()
    await callbacks.ingest_callback(
        db, replayed, outcome="normalised", error=None, events=[inbound("known")]
    )
    fresh, known_only, unparsed = raw_callback(), raw_callback(), raw_callback()
    batch = [
        callbacks.CallbackToStore(replayed, "normalised", None, [inbound("again")]),
        callbacks.CallbackToStore(fresh, "normalised", None, [inbound("b"), inbound("a")]),
        callbacks.CallbackToStore(known_only, "normalised", None, [inbound("known")]),
        callbacks.CallbackToStore(unparsed, "unparsed", "bad \x00 payload", []),
    ]

    results = await callbacks.ingest_callbacks(db, batch)

    assert results[replayed.id].outcome == "normalised"  # a replay changes nothing
    assert results[replayed.id].events == []
    assert results[fresh.id].outcome == "normalised"
    assert sorted(e.event_id for e in results[fresh.id].new_events) == sorted(
        [inbound("a").id, inbound("b").id]
    )
    assert results[known_only.id].outcome == "duplicate"
    assert results[unparsed.id].outcome == "unparsed"
    rows = await db.fetch("SELECT id, outcome, event_count, error, headers FROM raw_callbacks")
    by_id = {row["id"]: row for row in rows}
    assert (by_id[fresh.id]["outcome"], by_id[fresh.id]["event_count"]) == ("normalised", 2)
    assert (by_id[known_only.id]["outcome"], by_id[known_only.id]["event_count"]) == (
        "duplicate",
        0,
    )
    assert by_id[unparsed.id]["error"] == "bad  payload"
    assert json.loads(by_id[fresh.id]["headers"]) == [["X-Nul", "ab"], ["X-Nul", "second"]]
    owners = await db.fetch("SELECT id, raw_id, text FROM events")
    assert {row["id"]: row["raw_id"] for row in owners} == {
        inbound("known").id: replayed.id,
        inbound("a").id: fresh.id,
        inbound("b").id: fresh.id,
    }
    assert {row["text"] for row in owners} == {"hithere"}
    assert await db.fetchval("SELECT count(*) FROM events WHERE id = $1", inbound("again").id) == 0


async def test_batches_holding_the_same_inbound_reports_never_deadlock(
    dsn: str, db: asyncpg.Connection
) -> None:
    first, second = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        for round_ in range(30):
            a, b = inbound(f"a{round_}"), inbound(f"b{round_}")
            forward = [callbacks.CallbackToStore(raw_callback(), "normalised", None, [a, b])]
            backward = [
                callbacks.CallbackToStore(raw_callback(), "normalised", None, [b]),
                callbacks.CallbackToStore(raw_callback(), "normalised", None, [a]),
            ]
            results = await asyncio.gather(
                callbacks.ingest_callbacks(first, forward),
                callbacks.ingest_callbacks(second, backward),
            )
            inserted = [e for result in results for r in result.values() for e in r.new_events]
            assert sorted(e.event_id for e in inserted) == sorted([a.id, b.id])
    finally:
        await first.close()
        await second.close()


class NoSignal(Signal):
    def new_events(self) -> None:
        pass


async def test_an_item_queued_as_the_last_writer_leaves_is_still_written() -> None:
    written: list[int] = []

    async def write(items: list[int]) -> Sequence[int | Exception]:
        await asyncio.sleep(0.01)  # the database round trip
        written.extend(items)
        return items

    batcher = Batcher[int, int](write, writers=1, max_batch=100)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    (writer,) = batcher._running

    async def arriving_as_the_writer_leaves() -> int:
        # Polled, to land between the writer's last step and its done-callbacks.
        while not writer.done():  # noqa: ASYNC110
            await asyncio.sleep(0)
        return await batcher.submit(2)

    late = asyncio.create_task(arriving_as_the_writer_leaves())
    assert await first == 1
    assert await asyncio.wait_for(late, timeout=2) == 2
    assert written == [1, 2]


async def test_a_batch_holds_no_more_weight_than_allowed_but_a_heavy_item_goes_alone() -> None:
    sizes: list[list[int]] = []

    async def write(items: list[int]) -> Sequence[int | Exception]:
        sizes.append(items)
        await asyncio.sleep(0.01)
        return items

    batcher = Batcher[int, int](
        write, writers=1, max_batch=100, max_weight=10, weight=lambda item: item
    )
    results = await asyncio.gather(*(batcher.submit(n) for n in (1, 4, 4, 4, 30, 2)))

    assert results == [1, 4, 4, 4, 30, 2]
    assert sizes == [[1, 4, 4], [4], [30], [2]]


def many_inbound(tag: str, count: int) -> list[Event]:
    return [inbound(f"{tag}-{n}") for n in range(count)]


async def test_a_batch_too_slow_together_is_stored_one_by_one(
    dsn: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch call times out (as asyncpg's command timeout raises), whatever the machine's
    speed: the callbacks are then stored one by one, each alone within its own call."""
    batch_calls = 0

    async def too_slow_together(*args: Any) -> Any:
        nonlocal batch_calls
        batch_calls += 1
        raise TimeoutError  # what asyncpg raises when DB_COMMAND_TIMEOUT_S runs out

    monkeypatch.setattr(callbacks, "ingest_callbacks", too_slow_together)
    settings = Settings(database_url=dsn, db_pool_min_size=0, db_pool_max_size=2)
    database = await open_database(dsn, settings)
    writer = CallbackWriter(database, NoSignal(), writers=1, max_batch=100, max_events=10**6)
    entered, gate = asyncio.Event(), asyncio.Event()
    real_store = pipeline.store

    async def first_waits(*args: Any) -> Any:
        entered.set()
        await gate.wait()  # the first callback is being stored: the others queue behind it
        return await real_store(*args)

    monkeypatch.setattr(pipeline, "store", first_waits)
    try:
        with structlog.testing.capture_logs() as logs:
            first = asyncio.create_task(
                writer.store(raw_callback(), Normalised("normalised", events=many_inbound("c0", 3)))
            )
            await entered.wait()
            rest = [
                asyncio.create_task(
                    writer.store(
                        raw_callback(), Normalised("normalised", events=many_inbound(f"c{c}", 3))
                    )
                )
                for c in range(1, 10)  # the nine after the first, together
            ]
            await asyncio.sleep(0)
            gate.set()
            results = await asyncio.gather(first, *rest, return_exceptions=True)
    finally:
        await writer.close()
        await database.close()

    assert not [r for r in results if isinstance(r, BaseException)]
    assert batch_calls == 1  # the nine together, once
    assert any(
        entry["event"] == "batch_stored_one_by_one" and "TimeoutError" in entry["error"]
        for entry in logs
    )
    assert await db.fetchval("SELECT count(*) FROM events") == 3 * 10


async def test_one_writer_at_a_time_unless_one_is_stuck() -> None:
    batches: list[list[int]] = []
    stuck = asyncio.Event()

    async def write(items: list[int]) -> Sequence[int | Exception]:
        batches.append(items)
        if items == [0]:
            await stuck.wait()  # a transaction waiting on a lock
        else:
            await asyncio.sleep(0.005)
        return items

    batcher = Batcher[int, int](write, writers=4, max_batch=100)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    # While the first is young, arrivals wait for it: one writer, batches grow.
    queued = [asyncio.create_task(batcher.submit(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)
    assert len(batcher._running) == 1
    # Stuck for longer than SPREAD_AFTER_S: the next arrival starts a second writer.
    await asyncio.sleep(SPREAD_AFTER_S * 1.5)
    late = asyncio.create_task(batcher.submit(4))

    assert await asyncio.wait_for(asyncio.gather(*queued, late), timeout=2) == [1, 2, 3, 4]
    assert not first.done()
    assert batches[1] == [1, 2, 3, 4]
    stuck.set()
    assert await first == 0


async def test_a_cancelled_close_leaves_no_one_waiting_forever() -> None:
    gate = asyncio.Event()

    async def write(items: list[int]) -> Sequence[int | Exception]:
        await gate.wait()
        return items

    batcher = Batcher[int, int](write, writers=1, max_batch=1)
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(batcher.submit(2))  # queued behind the first
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.01)
    closing.cancel()  # a stop that could not wait
    await asyncio.gather(closing, return_exceptions=True)
    gate.set()

    _, pending = await asyncio.wait({first, second}, timeout=1)
    assert not pending
    assert first.cancelled()
    assert second.cancelled()


async def test_a_full_queue_answers_retry_later_at_once() -> None:
    gate = asyncio.Event()

    async def write(items: list[int]) -> Sequence[int | Exception]:
        await gate.wait()
        return items

    batcher = Batcher[int, int](write, writers=1, max_batch=100, max_queue=3)
    first = asyncio.create_task(batcher.submit(0))  # being written
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(batcher.submit(n)) for n in (1, 2, 3)]  # the queue is full
    await asyncio.sleep(0)

    with pytest.raises(DatabaseUnavailable):
        await batcher.submit(4)
    gate.set()
    assert await asyncio.gather(first, *waiting) == [0, 1, 2, 3]


async def test_a_stuck_database_answers_a_batch_within_two_timeouts(
    dsn: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def counted(write: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await write(*args, **kwargs)

        return call

    for name in ("ingest_callback", "ingest_callbacks"):
        monkeypatch.setattr(callbacks, name, counted(getattr(callbacks, name)))
    settings = Settings(
        database_url=dsn, db_pool_min_size=0, db_pool_max_size=2, db_command_timeout_s=0.5
    )
    database = await open_database(dsn, settings)
    writer = CallbackWriter(database, NoSignal(), writers=1, max_batch=100, max_events=10_000)
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE raw_callbacks IN EXCLUSIVE MODE")
            started = time.monotonic()
            results = await asyncio.gather(
                *(
                    writer.store(
                        raw_callback(), Normalised("normalised", events=[inbound(f"s{n}")])
                    )
                    for n in range(12)
                ),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started
    finally:
        await holder.close()
        await writer.close()
        await database.close()

    assert all(isinstance(r, TimeoutError) for r in results), results
    # The batch together, then one of them alone (two calls), or the first alone before the
    # others arrive (three), each waiting out the command timeout: never one per callback.
    assert calls <= 3
    assert elapsed < 11 * 0.5  # far from one timeout per callback, however busy the machine
