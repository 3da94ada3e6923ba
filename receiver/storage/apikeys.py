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

SCOPES = ("send", "read", "admin")
KEY_PREFIX = "smsr_"
# Every key this hub makes: the prefix and 32 random bytes in URL-safe base64 (43 characters).
KEY_SHAPE = re.compile(r"smsr_[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    name: str
    scopes: tuple[str, ...]

    def allows(self, scope: str) -> bool:
        """Whether the key has `scope` (admin can do everything)."""
        return scope in self.scopes or "admin" in self.scopes


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def has_key_shape(secret: str) -> bool:
    """Whether `secret` could be a key of ours: anything else is refused without asking the
    database (a stranger's guesses cost it nothing)."""
    return KEY_SHAPE.fullmatch(secret) is not None


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


async def create_key(connection: Connection, name: str, scopes: list[str]) -> tuple[uuid.UUID, str]:
    """A new key; its secret is returned once and only its hash is stored."""
    secret = new_secret()
    key_id = uuid.uuid4()
    await connection.execute(
        "INSERT INTO api_keys (id, name, prefix, secret_hash, scopes) VALUES ($1, $2, $3, $4, $5)",
        key_id,
        name,
        secret[: len(KEY_PREFIX) + 6],
        digest(secret),
        sorted(set(scopes)),
    )
    return key_id, secret


async def list_keys(connection: Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(
        "SELECT id, name, prefix, scopes, created_at, revoked_at, last_used_at FROM api_keys"
        " ORDER BY created_at"
    )
    return rows


async def revoke_key(connection: Connection, key_id: uuid.UUID) -> bool:
    result: str = await connection.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return result.endswith(" 1")


async def find_key(connection: Connection, secret: str) -> ApiKey | None:
    row = await connection.fetchrow(
        "SELECT id, name, scopes, last_used_at < now() - interval '1 minute' AS stale"
        " FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL",
        digest(secret),
    )
    if row is None:
        return None
    if row["stale"] is not False:  # a write a minute at most, not one per request
        with contextlib.suppress(Exception):
            await connection.execute(
                "UPDATE api_keys SET last_used_at = now() WHERE id = $1", row["id"]
            )
    return ApiKey(row["id"], row["name"], tuple(row["scopes"]))


async def still_valid(connection: Connection, key_id: uuid.UUID) -> bool:
    valid = await connection.fetchval(
        "SELECT revoked_at IS NULL FROM api_keys WHERE id = $1", key_id
    )
    return valid is True
