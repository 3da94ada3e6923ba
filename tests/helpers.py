"""Small helpers the receiver tests share."""

from __future__ import annotations

import socket
from typing import Any

from receiver.config import Settings


def free_port() -> int:
    """A loopback port nothing listens on now (for servers whose URL must be known first)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sandbox_settings(dsn: str, port: int, **changes: Any) -> Settings:
    """A hub with its simulated providers, reachable at http://127.0.0.1:<port>."""
    fields: dict[str, Any] = {
        "database_url": dsn,
        "db_pool_min_size": 0,
        "public_base_url": f"http://127.0.0.1:{port}",
        "sandbox": True,
        "sandbox_delay_s": 0.05,
    }
    return Settings(**(fields | changes))
