"""Tenants: who is asking (`Asker`, the one value every storage function that reads or changes a
tenant's rows takes), and the tenants themselves: made, listed, enabled or disabled, their
limits, providers and the numbers they own (migration 0021)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg

from receiver.storage.pool import Connection

# The tenant a single-tenant hub's data moved into, and whose keys `keys create` makes unless
# told another.
DEFAULT_TENANT = "default"
# Lower-case letters, digits, `-` and `_`, from a letter or digit: safe in a URL, a log line, a
# metric label and a file name, and one spelling per name.
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
NAME_RULE = "1 to 63 lower-case letters, digits, '-' or '_', starting with a letter or a digit"


@dataclass(frozen=True, slots=True)
class Asker:
    """Who is asking: a tenant, which reaches its own rows and nothing else, or the operator
    (`tenant` None), which reaches every tenant's and the rows of none (reports that match no
    message, replies attributed to nobody)."""

    tenant: str | None

    OPERATOR: ClassVar[Asker]

    @property
    def is_operator(self) -> bool:
        return self.tenant is None

    def owns(self, tenant: str | None) -> bool:
        """Whether a row of `tenant` is this asker's to see."""
        return self.tenant is None or self.tenant == tenant

    def only_own(self, column: str, param: int) -> str:
        """The SQL condition that keeps the asker's rows of `column`, with its tenant passed as
        parameter `param` (`tenant_param()`): a tenant's own, or, for the operator, every row
        (a condition on a NULL parameter the planner drops). Two statements, so that each is
        planned for what it asks (a tenant's through the indexes that lead with it)."""
        if self.tenant is None:
            return f"${param}::text IS NULL"
        return f"{column} = ${param}::text"

    def tenant_param(self) -> str | None:
        return self.tenant


Asker.OPERATOR = Asker(None)


class TenantError(Exception):
    """A tenant request that cannot be done: `code` says which rule (an HTTP answer's code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def valid_name(name: str) -> bool:
    return TENANT_NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    enabled: bool
    providers: tuple[str, ...] | None  # None: every configured provider
    send_rate_per_s: float | None  # None: the settings'
    send_burst: int | None
    daily_recipients: int | None

    def may_send_through(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers

    @classmethod
    def of_row(cls, row: asyncpg.Record, prefix: str = "") -> Tenant:
        providers = row[f"{prefix}providers"]
        return cls(
            name=row[f"{prefix}name"],
            enabled=row[f"{prefix}enabled"],
            providers=tuple(providers) if providers is not None else None,
            send_rate_per_s=row[f"{prefix}send_rate_per_s"],
            send_burst=row[f"{prefix}send_burst"],
            daily_recipients=row[f"{prefix}daily_recipients"],
        )


TENANT_COLUMNS = (
    "t.name, t.enabled, t.providers, t.send_rate_per_s, t.send_burst, t.daily_recipients,"
    " t.created_at, t.updated_at, t.disabled_at, t.help_reply"
)
# The same, each named `tenant_<column>`: beside another table's columns (a key's).
TENANT_COLUMNS_PREFIXED = ", ".join(
    f"{column} AS tenant_{column.removeprefix('t.')}"
    for column in TENANT_COLUMNS.replace(" ", "").split(",")
)
# The settings a tenant may be given (each None: the hub's setting).
SETTABLE = ("providers", "send_rate_per_s", "send_burst", "daily_recipients", "help_reply")


async def create_tenant(
    connection: Connection, name: str, settings: dict[str, Any] | None = None
) -> asyncpg.Record:
    """A new, enabled tenant; TenantError when the name breaks the rule or is taken."""
    if not valid_name(name):
        raise TenantError("invalid_tenant_name", f"a tenant name is {NAME_RULE}: {name[:80]!r}")
    given = {field: (settings or {}).get(field) for field in SETTABLE}
    row: asyncpg.Record | None = await connection.fetchrow(
        f"""
        INSERT INTO tenants AS t
            (name, providers, send_rate_per_s, send_burst, daily_recipients, help_reply)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (name) DO NOTHING
        RETURNING {TENANT_COLUMNS}
        """,
        name,
        given["providers"],
        given["send_rate_per_s"],
        given["send_burst"],
        given["daily_recipients"],
        given["help_reply"],
    )
    if row is None:
        raise TenantError("tenant_exists", f"a tenant named {name!r} exists already")
    return row


# A tenant as the operator sees it: its settings, its live keys (how many) and its numbers.
TENANT_VIEW = f"""
    SELECT {TENANT_COLUMNS},
           (SELECT count(*) FROM api_keys k
            WHERE k.tenant = t.name AND k.revoked_at IS NULL) AS keys,
           (SELECT coalesce(array_agg(n.number ORDER BY n.number), '{{}}')
            FROM tenant_numbers n WHERE n.tenant = t.name) AS numbers
    FROM tenants t
"""


async def list_tenants(connection: Connection) -> list[asyncpg.Record]:
    """Every tenant, with how many live keys and numbers it has."""
    rows: list[asyncpg.Record] = await connection.fetch(f"{TENANT_VIEW} ORDER BY t.name")
    return rows


async def get_tenant(connection: Connection, name: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await connection.fetchrow(f"{TENANT_VIEW} WHERE t.name = $1", name)
    return row


async def tenant(connection: Connection, name: str) -> Tenant | None:
    row = await connection.fetchrow(
        f"SELECT {TENANT_COLUMNS} FROM tenants t WHERE t.name = $1", name
    )
    return Tenant.of_row(row) if row is not None else None


async def update_tenant(
    connection: Connection, name: str, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Sets `enabled` and any of SETTABLE given in `changes` (a None value: back to the hub's
    setting); None when there is no such tenant."""
    row: asyncpg.Record | None = await connection.fetchrow(
        f"""
        UPDATE tenants AS t SET
            enabled = coalesce($2, t.enabled),
            disabled_at = CASE WHEN $2 IS NULL THEN t.disabled_at
                               WHEN $2 THEN NULL
                               ELSE coalesce(t.disabled_at, now()) END,
            providers = CASE WHEN $3 THEN $4 ELSE t.providers END,
            send_rate_per_s = CASE WHEN $5 THEN $6 ELSE t.send_rate_per_s END,
            send_burst = CASE WHEN $7 THEN $8 ELSE t.send_burst END,
            daily_recipients = CASE WHEN $9 THEN $10 ELSE t.daily_recipients END,
            help_reply = CASE WHEN $11 THEN $12 ELSE t.help_reply END,
            updated_at = now()
        WHERE t.name = $1
        RETURNING {TENANT_COLUMNS}
        """,
        name,
        changes.get("enabled"),
        "providers" in changes,
        changes.get("providers"),
        "send_rate_per_s" in changes,
        changes.get("send_rate_per_s"),
        "send_burst" in changes,
        changes.get("send_burst"),
        "daily_recipients" in changes,
        changes.get("daily_recipients"),
        "help_reply" in changes,
        changes.get("help_reply"),
    )
    return row


async def add_number(connection: Connection, name: str, number: str) -> None:
    """`number` (a number or sender id, as replies name it) is the tenant's from now on;
    TenantError when there is no such tenant or another tenant owns it."""
    async with connection.transaction():
        if await connection.fetchval("SELECT 1 FROM tenants WHERE name = $1", name) is None:
            raise TenantError("not_found", f"no tenant named {name!r}")
        owner = await connection.fetchval(
            "INSERT INTO tenant_numbers (number, tenant) VALUES ($1, $2)"
            " ON CONFLICT (number) DO UPDATE SET number = excluded.number"
            " RETURNING tenant",
            number,
            name,
        )
    if owner != name:
        raise TenantError("number_taken", f"{number} belongs to the tenant {owner!r} already")


async def remove_number(connection: Connection, name: str, number: str) -> bool:
    result: str = await connection.execute(
        "DELETE FROM tenant_numbers WHERE tenant = $1 AND number = $2", name, number
    )
    return result.endswith(" 1")


async def numbers_of(connection: Connection, name: str) -> list[str]:
    rows = await connection.fetch(
        "SELECT number FROM tenant_numbers WHERE tenant = $1 ORDER BY number", name
    )
    return [row["number"] for row in rows]


async def tenant_names(connection: Connection) -> list[str]:
    rows = await connection.fetch("SELECT name FROM tenants ORDER BY name")
    return [row["name"] for row in rows]


def settings_of(changes: dict[str, Any], known_providers: Sequence[str]) -> dict[str, Any]:
    """The tenant settings in `changes`, checked: TenantError naming a provider nobody knows."""
    providers = changes.get("providers")
    if providers is not None:
        unknown = sorted(set(providers) - set(known_providers))
        if unknown:
            raise TenantError(
                "unknown_provider",
                f"unknown provider(s) {', '.join(unknown)} (known: {', '.join(known_providers)})",
            )
        changes = changes | {"providers": sorted(set(providers))}
    return changes
