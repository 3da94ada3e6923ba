"""API keys: made with a secret shown once (only its hash is stored), listed, revoked, and
found by the secret a request presents."""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

from receiver.storage.pool import Connection
from receiver.storage.tenants import DEFAULT_TENANT, TENANT_COLUMNS_PREFIXED, Asker, Tenant

SCOPES = ("send", "read", "admin")
KEY_PREFIX = "smsr_"
# Every key this hub makes: the prefix and 32 random bytes in URL-safe base64 (43 characters).
KEY_SHAPE = re.compile(r"smsr_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    name: str
    scopes: tuple[str, ...]
    tenant: Tenant | None = None  # None: an operator key

    def allows(self, scope: str) -> bool:
        """Whether the key has `scope` (admin can do everything, inside its tenant)."""
        return scope in self.scopes or "admin" in self.scopes

    @property
    def asker(self) -> Asker:
        return Asker(self.tenant.name) if self.tenant is not None else Asker.OPERATOR

    @property
    def disabled_tenant(self) -> str | None:
        """The name of the key's tenant when that tenant is disabled (its keys are refused)."""
        return self.tenant.name if self.tenant is not None and not self.tenant.enabled else None


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def has_key_shape(secret: str) -> bool:
    """Whether `secret` could be a key of ours: anything else is refused without asking the
    database (a stranger's guesses cost it nothing)."""
    return KEY_SHAPE.fullmatch(secret) is not None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(
    connection: Connection, name: str, scopes: list[str], tenant: str | None = DEFAULT_TENANT
) -> tuple[uuid.UUID, str]:
    """A new key of `tenant` (None: an operator key); its secret is returned once and only its
    hash is stored. The tenant must exist and be enabled (checked by the caller)."""
    secret = new_secret()
    key_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes, tenant)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        key_id,
        name,
        secret[: len(KEY_PREFIX) + 6],
        digest(secret),
        sorted(set(scopes)),
        tenant,
    )
    return key_id, secret


async def list_keys(connection: Connection, tenant: str | None = None) -> list[asyncpg.Record]:
    """Every key (or `tenant`'s alone), without secrets: its tenant NULL for operator keys."""
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT id, name, prefix, scopes, tenant, created_at, revoked_at, last_used_at"
        " FROM api_keys WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at",
        tenant,
    )
    return rows


async def revoke_key(connection: Connection, key_id: uuid.UUID) -> bool:
    result: str = await connection.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return result.endswith(" 1")


async def find_key(connection: Connection, secret: str) -> ApiKey | None:
    # The key's tenant comes with it (one round trip): whether it is enabled, its providers
    # and its limits are what every request of the key is checked against.
    row = await connection.fetchrow(
        f"SELECT k.id, k.name, k.scopes, k.last_used_at < now() - interval '1 minute' AS stale,"
        f" {TENANT_COLUMNS_PREFIXED}"
        " FROM api_keys k LEFT JOIN tenants t ON t.name = k.tenant"
        " WHERE k.secret_hash = $1 AND k.revoked_at IS NULL",
        digest(secret),
    )
    if row is None:
        return None
    if row["stale"] is not False:  # a write a minute at most, not one per request
        with contextlib.suppress(Exception):
            await connection.execute(
                "UPDATE api_keys SET last_used_at = now() WHERE id = $1", row["id"]
            )
    tenant = Tenant.of_row(row, "tenant_") if row["tenant_name"] is not None else None
    return ApiKey(row["id"], row["name"], tuple(row["scopes"]), tenant)


async def still_valid(connection: Connection, key_id: uuid.UUID) -> bool:
    """Whether the key is neither revoked nor of a tenant disabled since."""
    valid = await connection.fetchval(
        "SELECT k.revoked_at IS NULL AND coalesce(t.enabled, true)"
        " FROM api_keys k LEFT JOIN tenants t ON t.name = k.tenant WHERE k.id = $1",
        key_id,
    )
    return valid is True
