"""The callback token of a benchmark or fault run: every provider is given one, as production
configures them (callbacks are refused without authentication), and the load calls back on
the token path."""

from __future__ import annotations

import secrets

from normalizers.registry import DEFAULT_REGISTRY

CALLBACK_TOKEN = secrets.token_urlsafe(32)  # one per run


def token_env() -> dict[str, str]:
    """The serve's environment naming the token of every provider."""
    return {f"{name.upper()}__CALLBACK_TOKEN": CALLBACK_TOKEN for name in DEFAULT_REGISTRY}


def callback_path(provider: str) -> str:
    return f"/callbacks/{provider}/{CALLBACK_TOKEN}"
