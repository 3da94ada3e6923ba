"""Rows and registries the tests make: a raw callback, a message stored directly (not through the
send API), orphan reports linked to it, and a registry with one provider replaced."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

from normalizers.base import Provider
from normalizers.registry import Registry
from receiver.storage.callbacks import RawCallback
from receiver.storage.pool import Connection


def a_raw_callback(provider: str = "carrierx", **changes: Any) -> RawCallback:
    """A POST of `{}` to /callbacks/<provider>, received now, with a fresh id; `changes` replace
    any field."""
    raw = RawCallback(
        id=uuid.uuid4(),
        provider=provider,
        method="POST",
        path=f"/callbacks/{provider}",
        query="",
        headers=[],
        body=b"{}",
        remote_addr=None,
        received_at=datetime.now(UTC),
    )
    return dataclasses.replace(raw, **changes)


async def insert_message(
    connection: Connection,
    message_id: uuid.UUID,
    provider: str,
    *,
    provider_message_id: str | None = None,
    sender: str | None = None,
    body: str | None = None,
    client_ref: str | None = None,
    tenant: str = "default",
) -> None:
    await connection.execute(
        """
        INSERT INTO messages (id, provider, provider_message_id, sender, body, client_ref, tenant)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        message_id,
        provider,
        provider_message_id,
        sender,
        body,
        client_ref,
        tenant,
    )


async def attach_orphans(
    connection: Connection,
    message_id: uuid.UUID,
    provider: str,
    provider_message_id: str,
    recipient: str | None,
) -> int:
    """Link the reports that arrived before the message was known; returns the recipient row."""
    row_id: int = await connection.fetchval(
        "SELECT attach_orphans($1, $2, $3, $4)",
        message_id,
        provider,
        provider_message_id,
        recipient,
    )
    return row_id


def with_override(base: Registry, provider: Provider) -> Registry:
    """A registry where `provider` replaces the module of the same name."""
    return {**base, provider.name: provider}
