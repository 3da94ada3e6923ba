"""Migrations: in order, once each, safe to run twice and from two instances at once."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from receiver.storage.migrate import apply_migrations, load_migrations, migrations_dir
from tests.helpers import migrations_before

EXPECTED_TABLES = {
    "raw_callbacks",
    "correction_runs",
    "message_discrepancies",
    "callback_refusals",
    "messages",
    "message_recipients",
    "events",
    "subscriptions",
    "deliveries",
    "schema_migrations",
    "recipient_parts",
    "idempotency_keys",
    "delivery_attempts",
    "api_keys",
    "send_rate_buckets",
    "send_quota_days",
    "tenants",
    "tenant_numbers",
    "send_routes",
    "send_route_changes",
    "provider_health",
    "hub_keys",
    "opt_outs",
    "help_replies",
}


async def tables(connection: asyncpg.Connection) -> set[str]:
    """The tables of the schema, partitions left out."""
    rows = await connection.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )
    return {row["relname"] for row in rows}


async def test_migrations_apply_twice_harmlessly(fresh_database: str) -> None:
    connection = await asyncpg.connect(fresh_database)
    try:
        first = await apply_migrations(connection, migrations_dir())
        second = await apply_migrations(connection, migrations_dir())

        assert first == [m.name for m in load_migrations(migrations_dir())]
        assert second == []
        assert await tables(connection) == EXPECTED_TABLES
        assert await connection.fetchval("SELECT count(*) FROM schema_migrations") == len(first)
    finally:
        await connection.close()


async def test_two_instances_migrating_at_once_do_not_race(fresh_database: str) -> None:
    first, second = await asyncpg.connect(fresh_database), await asyncpg.connect(fresh_database)
    try:
        results = await asyncio.gather(
            apply_migrations(first, migrations_dir()), apply_migrations(second, migrations_dir())
        )

        assert sorted(len(applied) for applied in results) == [
            0,
            len(load_migrations(migrations_dir())),
        ]
        assert await tables(first) == EXPECTED_TABLES
    finally:
        await first.close()
        await second.close()


async def test_a_failing_migration_rolls_back_and_is_not_recorded(
    fresh_database: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE good (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_thing;")
    connection = await asyncpg.connect(fresh_database)
    try:
        with pytest.raises(asyncpg.UndefinedColumnError):
            await apply_migrations(connection, tmp_path)

        assert await connection.fetchval("SELECT array_agg(name) FROM schema_migrations") == [
            "0001_good"
        ]
        assert "half" not in await tables(connection)
        # The lock was released: a later run can proceed once the file is fixed.
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int);")
        assert await apply_migrations(connection, tmp_path) == ["0002_bad"]
    finally:
        await connection.close()


def test_badly_named_migration_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "init.sql").write_text("SELECT 1;")

    with pytest.raises(ValueError, match=r"0001_name\.sql"):
        load_migrations(tmp_path)


async def test_0011_turns_rejected_callbacks_into_metadata_and_deletes_them(
    fresh_database: str, tmp_path: Path
) -> None:
    earlier = migrations_before(11, tmp_path)
    connection = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(connection, earlier)
        insert = (
            "INSERT INTO raw_callbacks (id, provider, method, path, headers, body, remote_addr,"
            " received_at, outcome, error)"
            " VALUES (gen_random_uuid(), 'carrierx', 'POST', '/callbacks/carrierx',"
            " '[[\"Cookie\", \"session=secret\"]]', $1, '198.51.100.7', now(), $2, $3)"
        )
        await connection.execute(insert, b"forged", "rejected", "missing or wrong callback token")
        await connection.execute(insert, b"x", "rejected", "source address 1.2.3.4 is not allowed")
        await connection.execute(insert, b"real", "unparsed", "not JSON")

        await apply_migrations(connection, migrations_dir())

        outcomes = await connection.fetch("SELECT outcome FROM raw_callbacks")
        refusals = await connection.fetch(
            "SELECT reason, status, size_bytes, body_sha256, remote_addr FROM callback_refusals"
            " ORDER BY status"
        )
    finally:
        await connection.close()
    assert [r["outcome"] for r in outcomes] == ["unparsed"]
    assert [(r["reason"], r["status"], r["size_bytes"]) for r in refusals] == [
        ("missing or wrong callback token", 401, 6),
        ("source address 1.2.3.4 is not allowed", 403, 1),
    ]
    assert bytes(refusals[0]["body_sha256"]) == hashlib.sha256(b"forged").digest()
    assert refusals[0]["remote_addr"] == "198.51.100.7"


async def test_0012_gives_waiting_recipients_a_deadline(
    fresh_database: str, tmp_path: Path
) -> None:
    earlier = migrations_before(12, tmp_path)
    connection = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(connection, earlier)
        await connection.execute(
            "INSERT INTO messages (id, provider, created_at, expires_at) VALUES"
            " ('00000000-0000-0000-0000-000000000001', 'swift', '2026-01-01Z', NULL),"
            " ('00000000-0000-0000-0000-000000000002', 'swift', '2026-01-01Z', '2026-01-02Z')"
        )
        await connection.execute(
            "INSERT INTO message_recipients"
            " (message_id, provider, provider_message_id, recipient, status, final) VALUES"
            " ('00000000-0000-0000-0000-000000000001', 'swift', 'a', '+1', 'sent', false),"
            " ('00000000-0000-0000-0000-000000000001', 'swift', 'b', '+2', 'delivered', true),"
            " ('00000000-0000-0000-0000-000000000002', 'swift', 'c', '+3', 'sent', false),"
            " (NULL, 'swift', 'orphan', '+4', 'sent', false)"
        )

        await apply_migrations(connection, migrations_dir())

        deadlines = {
            row["provider_message_id"]: row["deadline"]
            for row in await connection.fetch(
                "SELECT provider_message_id, deadline AT TIME ZONE 'UTC' AS deadline"
                " FROM message_recipients"
            )
        }
    finally:
        await connection.close()
    assert str(deadlines["a"]) == "2026-01-04 00:00:00"  # created + 72 h
    assert deadlines["b"] is None  # final already
    assert str(deadlines["c"]) == "2026-01-02 00:00:00"  # its expires_at
    assert deadlines["orphan"] is None  # not a message the hub sent


async def test_0016_partitions_keep_every_row_and_go_on_numbering(
    fresh_database: str, tmp_path: Path
) -> None:
    earlier = migrations_before(16, tmp_path)
    connection = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(connection, earlier)
        await connection.execute(
            "INSERT INTO subscriptions (id, url, secret) VALUES"
            " ('00000000-0000-0000-0000-00000000000a', 'http://127.0.0.1:9/x', 's')"
        )
        await connection.execute(
            """
            INSERT INTO raw_callbacks (id, provider, method, path, body, received_at, outcome)
            SELECT gen_random_uuid(), 'swift', 'POST', '/x', ''::bytea,
                   now() - make_interval(days => n), 'unparsed'
            FROM generate_series(1, 50) AS n;
            INSERT INTO events (id, type, provider, status, final, provider_status, occurred_at,
                                received_at, occurred_at_source, stored_at)
            SELECT 'ev-' || n, 'message.inbound', 'swift', 'received', true, 'MO', now(),
                   now(), 'provider', now() - make_interval(days => n)
            FROM generate_series(1, 40) AS n;
            INSERT INTO delivery_attempts (delivery_id, attempt, started_at)
            SELECT d.id, 1, now() FROM deliveries d;
            """
        )
        before = {
            table: await connection.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("raw_callbacks", "events", "delivery_attempts", "deliveries")
        }
        feed_before = await connection.fetchval("SELECT max(feed_seq) FROM events")
        attempt_before = await connection.fetchval("SELECT max(id) FROM delivery_attempts")

        await apply_migrations(connection, migrations_dir())

        after = {
            table: await connection.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("raw_callbacks", "events", "delivery_attempts", "deliveries")
        }
        legacy = await connection.fetchval("SELECT count(*) FROM events_legacy")
        kinds = await connection.fetchval(
            "SELECT relkind::text FROM pg_class WHERE relname = 'events'"
        )
        # a new event goes on numbering and is queued once per subscription (one trigger)
        await connection.execute(
            "INSERT INTO events (id, type, provider, status, final, provider_status,"
            " occurred_at, received_at, occurred_at_source)"
            " VALUES ('ev-new', 'message.inbound', 'swift', 'received', true, 'MO', now(),"
            " now(), 'provider')"
        )
        feed_new = await connection.fetchval("SELECT feed_seq FROM events WHERE id = 'ev-new'")
        queued = await connection.fetchval(
            "SELECT count(*) FROM deliveries WHERE event_id = 'ev-new'"
        )
        await connection.execute(
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at)"
            " SELECT id, 2, now() FROM deliveries WHERE event_id = 'ev-new'"
        )
        attempt_new = await connection.fetchval("SELECT max(id) FROM delivery_attempts")
    finally:
        await connection.close()
    assert before == after
    assert before["events"] == 40
    assert before["deliveries"] == 40
    assert legacy == 40
    assert kinds == "p"
    assert feed_new == feed_before + 1
    assert queued == 1
    assert attempt_new == attempt_before + 1


async def test_a_report_finds_its_recipient_by_the_unique_key_however_often_a_number_is_used(
    db: asyncpg.Connection,
) -> None:
    # a number that received many messages: the generic plan of store_events' update must
    # still take the unique key, not walk the number's rows (migration 0017)
    await db.execute(
        "INSERT INTO messages (id, provider, tenant)"
        " VALUES ('00000000-0000-0000-0000-000000000001', 'x', 'default')"
    )
    await db.execute(
        "INSERT INTO message_recipients (message_id, provider, provider_message_id, recipient,"
        " status) SELECT '00000000-0000-0000-0000-000000000001', 'carrierx', 'p' || n,"
        " CASE WHEN n % 10 = 0 THEN '+447700900001' ELSE '+1555' || lpad(n::text, 7, '0') END,"
        " 'sent' FROM generate_series(1, 20000) AS n"
    )
    await db.execute("ANALYZE message_recipients")
    await db.execute("SET plan_cache_mode = force_generic_plan")
    await db.execute(
        "PREPARE report(text, text, text) AS UPDATE message_recipients AS mr"
        " SET sequence = mr.sequence + 1"
        " WHERE mr.provider = $1 AND mr.provider_message_id = $2 AND mr.recipient = $3"
    )
    plan = "\n".join(
        row[0]
        for row in await db.fetch("EXPLAIN EXECUTE report('carrierx', 'p70', '+447700900001')")
    )
    await db.execute("DEALLOCATE report")
    assert "message_recipients_provider_provider_message_id_recipient_key" in plan


async def test_tenants_migration_moves_a_single_tenant_hubs_data_into_default(
    fresh_database: str, tmp_path: Path
) -> None:
    earlier = migrations_before(21, tmp_path)
    connection = await asyncpg.connect(fresh_database)
    try:
        await apply_migrations(connection, earlier)
        await connection.execute(
            """
            INSERT INTO messages (id, provider, sender) VALUES
                ('00000000-0000-0000-0000-000000000001', 'swift', '+447700900999');
            INSERT INTO message_recipients (message_id, provider, provider_message_id, recipient,
                                            status) VALUES
                ('00000000-0000-0000-0000-000000000001', 'swift', 'sw-1', '+447700900001',
                 'sent'),
                (NULL, 'swift', 'orphan-1', '+447700900002', 'delivered');
            INSERT INTO events (id, type, provider, message_id, provider_message_id, recipient,
                                status, final, provider_status, occurred_at, received_at,
                                occurred_at_source) VALUES
                ('ev-ours', 'message.status', 'swift', '00000000-0000-0000-0000-000000000001',
                 'sw-1', '+447700900001', 'sent', false, 'sent', now(), now(), 'provider'),
                ('ev-orphan', 'message.status', 'swift', NULL, 'orphan-1', '+447700900002',
                 'delivered', true, 'delivered', now(), now(), 'provider'),
                ('ev-summary', 'message.summary', 'swift', NULL, 'sw-1', NULL, 'sent', false,
                 'sent', now(), now(), 'provider'),
                ('ev-summary-of-nothing', 'message.summary', 'swift', NULL, 'nobody', NULL,
                 'sent', false, 'sent', now(), now(), 'provider'),
                ('ev-reply', 'message.inbound', 'swift', NULL, 'mo-1', '+447700900999',
                 'received', true, 'received', now(), now(), 'provider');
            INSERT INTO subscriptions (id, url, secret) VALUES
                ('00000000-0000-0000-0000-00000000000a', 'http://127.0.0.1:9/x', 's');
            INSERT INTO api_keys (id, name, prefix, secret_hash, scopes) VALUES
                ('00000000-0000-0000-0000-0000000000b1', 'reader', 'smsr_a', 'a', '{read}'),
                ('00000000-0000-0000-0000-0000000000b2', 'shop', 'smsr_b', 'b', '{send,read}'),
                ('00000000-0000-0000-0000-0000000000b3', 'ops', 'smsr_c', 'c', '{admin}'),
                ('00000000-0000-0000-0000-0000000000b4', 'all', 'smsr_d', 'd',
                 '{admin,read,send}');
            """
        )

        await apply_migrations(connection, migrations_dir())

        message_tenant = await connection.fetchval("SELECT tenant FROM messages")
        recipients = {
            row[0]: row[1]
            for row in await connection.fetch(
                "SELECT provider_message_id, tenant FROM message_recipients"
            )
        }
        events = {row[0]: row[1] for row in await connection.fetch("SELECT id, tenant FROM events")}
        subscription = await connection.fetchval("SELECT tenant FROM subscriptions")
        keys = {
            row[0]: row[1] for row in await connection.fetch("SELECT name, tenant FROM api_keys")
        }
        # A report for the old message after the migration is the tenant's, through its row.
        await connection.execute(
            "SELECT store_events(NULL, $1::jsonb)",
            '[{"id": "ev-late", "type": "message.status", "provider": "swift",'
            ' "provider_message_id": "sw-1", "recipient": "+447700900001",'
            ' "status": "delivered", "final": true, "provider_status": "delivered",'
            ' "occurred_at": "2026-12-01T00:00:00Z", "received_at": "2026-12-01T00:00:00Z",'
            ' "occurred_at_source": "provider", "raw_id": null}]',
        )
        late = await connection.fetchval("SELECT tenant FROM events WHERE id = 'ev-late'")
        with pytest.raises(asyncpg.NotNullViolationError):
            await connection.execute(
                "INSERT INTO messages (id, provider) VALUES ($1, 'x')", uuid4()
            )
    finally:
        await connection.close()
    assert message_tenant == "default"
    assert recipients == {"sw-1": "default", "orphan-1": None}
    assert events == {
        "ev-ours": "default",
        "ev-orphan": None,  # matches no message: the operator's
        "ev-summary": "default",
        "ev-summary-of-nothing": None,
        "ev-reply": "default",
    }
    assert subscription is None  # made by an admin key: the operator's, every event as before
    assert keys == {"reader": "default", "shop": "default", "ops": None, "all": None}
    assert late == "default"


async def test_no_partition_is_made_over_the_legacy_one(db: asyncpg.Connection) -> None:
    # The legacy partitions of 0016 cover everything before the hour after the migration: the
    # days before it (and, in the hour before midnight, the day of the migration itself, whose
    # unit then reaches into the legacy partition) are not made again (migration 0022).
    made = await db.fetchval(
        "SELECT create_partitions('raw_callbacks', now() - interval '3 days', now())"
    )
    months = await db.fetchval(
        "SELECT create_partitions('events', now() - interval '65 days', now())"
    )
    legacy_end = await db.fetchval(
        "SELECT ends FROM table_partitions('raw_callbacks') WHERE name = 'raw_callbacks_legacy'"
    )
    days_after = await db.fetchval(
        "SELECT count(*) FROM table_partitions('raw_callbacks') WHERE starts >= $1", legacy_end
    )

    assert made == 0
    assert months == 0
    assert days_after >= 7  # the week ahead is there, from the legacy partition's end
