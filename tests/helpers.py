"""Small helpers the receiver tests share."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from aiohttp.test_utils import TestClient

from receiver.app import create_app
from receiver.config import Settings
from receiver.storage.migrate import load_migrations, migrations_dir

REPO = Path(__file__).resolve().parent.parent


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


async def sandbox_hub(aiohttp_client: Any, dsn: str, **changes: Any) -> TestClient[Any, Any]:
    """A hub with its simulated providers on a loopback port of its own (the providers call it
    back there), no dispatcher unless asked: for tests that drive it through its API."""
    port = free_port()
    settings = sandbox_settings(dsn, port, **({"dispatcher": False} | changes))
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings, dsn), server_kwargs={"port": port}
    )
    return client


def serve_env(dsn: str, port: int, *, api_auth: bool = False, **more: str) -> dict[str, str]:
    """The environment of a real `serve --sandbox` on loopback `port` for a test: quiet, fast
    simulated providers, subscribers allowed on loopback; `more` over it."""
    return {
        "DATABASE_URL": dsn,
        "API_AUTH": "true" if api_auth else "false",
        "LOG_LEVEL": "warning",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "SANDBOX_DELAY_S": "0.05",
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    } | more


def stop_group(process: subprocess.Popen[bytes] | None, grace_s: float = 20) -> None:
    """A process started in a group of its own (start_new_session), stopped with its group:
    SIGTERM, then SIGKILL after `grace_s`."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextlib.contextmanager
def running_serve(
    port: int, env: dict[str, str], *options: str, output: Path | None = None
) -> Iterator[str]:
    """A real `serve` process (its own process group) on loopback `port`, with `env` over this
    one's, once it answers /healthz; stopped (SIGTERM, then SIGKILL) on leaving. Yields its URL.
    Its output (the logs) goes to `output` when given."""
    sink: IO[bytes] | int = output.open("wb") if output is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve", *options, "--port", str(port)],
        env={**os.environ, **env},
        stdout=sink,
        stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        stop_group(process, 15)
        if not isinstance(sink, int):
            sink.close()


def migrations_before(version: int, tmp_path: Path) -> Path:
    """A directory holding the migrations older than `version`: the schema a database had
    before it, to test that migration from."""
    earlier = tmp_path / f"before-{version:04d}"
    earlier.mkdir()
    for migration in load_migrations(migrations_dir()):
        if migration.version < version:
            (earlier / f"{migration.name}.sql").write_text(migration.sql)
    return earlier
