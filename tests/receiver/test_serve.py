"""`sms-receiver serve` as a real process: it starts, serves, and drains in-flight requests on
SIGTERM before exiting."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import asyncpg
import pytest

from tests.helpers import free_port


@pytest.fixture
def served(dsn: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve", "--port", str(port)],
        env={**os.environ, "DATABASE_URL": dsn, "SHUTDOWN_TIMEOUT_S": "10"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, ended by its id below
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("serve did not start within 30 s")
    yield process, port
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


async def test_sigterm_lets_an_in_flight_callback_finish(
    served: tuple[subprocess.Popen[bytes], int], db: asyncpg.Connection
) -> None:
    process, port = served
    # Hold the recipient's row so that the callback's transaction waits inside the handler.
    await db.execute(
        "INSERT INTO message_recipients (provider, provider_message_id, recipient, status)"
        " VALUES ('carrierx', 'drain-1', '+15162065574', 'queued')"
    )
    blocker = db.transaction()
    await blocker.start()
    await db.execute(
        "SELECT 1 FROM message_recipients WHERE provider_message_id = 'drain-1' FOR UPDATE"
    )
    body = json.dumps({"message_sid": "drain-1", "status": "delivered", "to": "15162065574"})
    request = (
        "POST /callbacks/carrierx HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=15) as connection:
        connection.sendall(request.encode())
        await asyncio.sleep(0.5)  # the handler now waits for the row lock
        os.killpg(process.pid, signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(ConnectionRefusedError):  # no longer accepting new connections
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        await blocker.rollback()
        answer = connection.recv(65536).decode()

    assert answer.startswith("HTTP/1.1 200"), answer
    assert process.wait(timeout=15) == 0
    assert await db.fetchval("SELECT status FROM message_recipients") == "delivered"
    assert process.stdout is not None
    log_lines = [
        json.loads(line) for line in process.stdout.read().splitlines() if line.startswith(b"{")
    ]
    request_lines = [line for line in log_lines if line.get("event") == "request"]
    assert request_lines[-1]["status"] == 200
    assert request_lines[-1]["provider"] == "carrierx"
    assert request_lines[-1]["outcome"] == "normalised"
    assert "latency_ms" in request_lines[-1]
