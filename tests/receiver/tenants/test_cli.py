"""`sms-receiver tenants` and `sms-receiver keys` as an operator runs them, on the test database
(tests/cli_runs.py)."""

from __future__ import annotations

import asyncpg
import pytest

from receiver.storage.tenants import NAME_RULE
from tests.cli_runs import cli_run, commands_on

NUMBER = "+447700900990"


@pytest.fixture(autouse=True)
def database(monkeypatch: pytest.MonkeyPatch, dsn: str, db: asyncpg.Connection) -> None:
    commands_on(monkeypatch, dsn)  # emptied by `db`


async def test_tenants_create_then_list(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    created = await cli_run(capsys, "tenants", "create", "alpha")

    assert created.status == 0, created.err
    assert "tenant alpha created" in created.out
    assert await db.fetchval("SELECT enabled FROM tenants WHERE name = 'alpha'") is True

    listed = await cli_run(capsys, "tenants", "list")
    assert listed.status == 0, listed.err
    lines = {line.split()[0]: line for line in listed.out.splitlines()}
    assert set(lines) == {"alpha", "default"}
    assert "enabled" in lines["alpha"].split()
    assert "providers=all" in lines["alpha"]


async def test_a_bad_name_is_refused_naming_the_rule(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    refused = await cli_run(capsys, "tenants", "create", "Bad Name")

    assert refused.status != 0
    assert refused.err.startswith("error: ")
    assert NAME_RULE in refused.err
    assert "'Bad Name'" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    assert await db.fetchval("SELECT count(*) FROM tenants") == 1  # `default` alone


async def test_a_taken_name_is_refused(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    assert (await cli_run(capsys, "tenants", "create", "alpha")).status == 0

    again = await cli_run(capsys, "tenants", "create", "alpha")

    assert again.status == 1
    assert "'alpha' exists already" in again.err


async def test_a_number_is_one_tenants(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    for name in ("alpha", "beta"):
        assert (await cli_run(capsys, "tenants", "create", name)).status == 0

    added = await cli_run(capsys, "tenants", "numbers", "add", "alpha", NUMBER)
    assert added.status == 0, added.err
    assert await db.fetchval("SELECT tenant FROM tenant_numbers WHERE number = $1", NUMBER) == (
        "alpha"
    )

    taken = await cli_run(capsys, "tenants", "numbers", "add", "beta", NUMBER)
    assert taken.status == 1
    assert NUMBER in taken.err
    assert "'alpha'" in taken.err
    assert await db.fetchval("SELECT tenant FROM tenant_numbers WHERE number = $1", NUMBER) == (
        "alpha"
    )

    listed = await cli_run(capsys, "tenants", "numbers", "list", "alpha")
    assert listed.out.split() == [NUMBER]
    assert (await cli_run(capsys, "tenants", "numbers", "list", "beta")).out == ""


async def test_keys_of_an_unknown_tenant_are_refused(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    refused = await cli_run(capsys, "keys", "create", "--tenant", "nope", "--scope", "read")

    assert refused.status == 1
    assert "no tenant named 'nope'" in refused.err
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_keys_of_a_disabled_tenant_are_refused(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    assert (await cli_run(capsys, "tenants", "create", "alpha")).status == 0
    disabled = await cli_run(capsys, "tenants", "disable", "alpha")
    assert disabled.status == 0, disabled.err
    assert await db.fetchval("SELECT enabled FROM tenants WHERE name = 'alpha'") is False

    refused = await cli_run(capsys, "keys", "create", "--tenant", "alpha", "--scope", "read")

    assert refused.status == 1
    assert "'alpha' is disabled" in refused.err
    assert await db.fetchval("SELECT count(*) FROM api_keys") == 0

    assert (await cli_run(capsys, "tenants", "enable", "alpha")).status == 0
    made = await cli_run(capsys, "keys", "create", "--tenant", "alpha", "--scope", "read")
    assert made.status == 0, made.err
    assert await db.fetchval("SELECT tenant FROM api_keys") == "alpha"


async def test_an_operator_key_is_of_no_tenant(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    made = await cli_run(
        capsys, "keys", "create", "--operator", "--scope", "admin", "--name", "ops"
    )

    assert made.status == 0, made.err
    assert "operator" in made.out
    row = await db.fetchrow("SELECT tenant, scopes FROM api_keys WHERE name = 'ops'")
    assert row is not None
    assert row["tenant"] is None
    assert row["scopes"] == ["admin"]


async def test_a_key_without_tenant_is_defaults(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    made = await cli_run(capsys, "keys", "create", "--scope", "read", "--name", "app")

    assert made.status == 0, made.err
    assert "tenant default" in made.out
    assert await db.fetchval("SELECT tenant FROM api_keys WHERE name = 'app'") == "default"


async def test_keys_list_shows_each_keys_tenant(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    assert (await cli_run(capsys, "tenants", "create", "alpha")).status == 0
    for argv in (
        ("--tenant", "alpha", "--scope", "send", "--name", "alpha-app"),
        ("--operator", "--scope", "admin", "--name", "ops"),
        ("--scope", "read", "--name", "default-app"),
    ):
        made = await cli_run(capsys, "keys", "create", *argv)
        assert made.status == 0, made.err

    listed = await cli_run(capsys, "keys", "list")

    assert listed.status == 0, listed.err
    # id, prefix, scopes, tenant, state, name
    whose = {line.split()[-1]: line.split()[3] for line in listed.out.splitlines()}
    assert whose == {"alpha-app": "alpha", "ops": "(operator)", "default-app": "default"}


async def test_tenants_set_limits_its_providers(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    assert (await cli_run(capsys, "tenants", "create", "alpha")).status == 0

    changed = await cli_run(capsys, "tenants", "set", "alpha", "--provider", "swift")

    assert changed.status == 0, changed.err
    assert await db.fetchval("SELECT providers FROM tenants WHERE name = 'alpha'") == ["swift"]
    listed = await cli_run(capsys, "tenants", "list")
    assert "providers=swift" in listed.out

    every = await cli_run(capsys, "tenants", "set", "alpha", "--all-providers")
    assert every.status == 0, every.err
    assert await db.fetchval("SELECT providers FROM tenants WHERE name = 'alpha'") is None


async def test_commands_on_an_unknown_tenant_are_refused(
    capsys: pytest.CaptureFixture[str], db: asyncpg.Connection
) -> None:
    for argv in (
        ("tenants", "disable", "nope"),
        ("tenants", "set", "nope", "--send-burst", "5"),
        ("tenants", "numbers", "add", "nope", NUMBER),
        ("tenants", "numbers", "list", "nope"),
    ):
        refused = await cli_run(capsys, *argv)
        assert refused.status == 1, argv
        assert "no tenant named 'nope'" in refused.err, argv
    assert await db.fetchval("SELECT count(*) FROM tenant_numbers") == 0
