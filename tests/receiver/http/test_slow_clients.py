"""Slow and hostile clients: a body that trickles in is answered 408, a connection idle or with
an incomplete request head is closed, deeply nested JSON is refused cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from receiver.config import Settings
from tests.helpers import free_port, running_serve

Client = TestClient[Any, Any]


@pytest.fixture
def settings(dsn: str) -> Settings:
    return Settings(database_url=dsn, db_pool_min_size=0, body_timeout_s=0.5)


async def raw_request(port: int, head: bytes, body: bytes = b"", wait_s: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), wait_s)
    finally:
        writer.close()


async def test_a_body_that_trickles_in_is_answered_408(
    client: Client, db: asyncpg.Connection
) -> None:
    assert client.port is not None
    head = (
        b"POST /callbacks/carrierx HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    started = time.monotonic()
    answer = await raw_request(client.port, head, b'{"message_sid": ')  # and no more

    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer
    assert b"Connection: close" in answer
    assert time.monotonic() - started < 7  # the body timeout is 0.5 s here; generous for a busy CI
    assert await db.fetchval("SELECT count(*) FROM raw_callbacks") == 0  # nothing acknowledged


async def test_json_nested_too_deeply_is_refused_cleanly(
    client: Client, db: asyncpg.Connection
) -> None:
    deep = "[" * 100_000 + "]" * 100_000

    callback = await client.post(
        "/callbacks/carrierx", data=deep, headers={"Content-Type": "application/json"}
    )
    send = await client.post(
        "/v1/messages", data=deep, headers={"Content-Type": "application/json"}
    )

    assert callback.status == 202
    assert (await callback.json())["error"] == "body is JSON nested too deeply"
    assert send.status == 422
    assert await db.fetchval("SELECT outcome FROM raw_callbacks") == "unparsed"


@pytest.fixture
def serving(dsn: str) -> Iterator[int]:
    """A real `serve` with a 1 s idle timeout (the test client's server has its own settings)."""
    port = free_port()
    env = {
        "DATABASE_URL": dsn,
        "HTTP_IDLE_TIMEOUT_S": "1",
        "BODY_TIMEOUT_S": "1",
        "API_AUTH": "false",
        "DISPATCHER": "false",
    }
    with running_serve(port, env):
        yield port


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /callbacks/carrierx HTTP/1.1\r\nHost: 127.0.0.1\r\n"],
    ids=["idle", "incomplete head"],
)
async def test_a_connection_idle_or_with_an_incomplete_head_is_closed(
    serving: int, sent: bytes
) -> None:
    started = time.monotonic()
    answer = await raw_request(serving, sent, wait_s=5.0)

    assert answer == b""  # closed by the server, without an answer
    assert 0.8 < time.monotonic() - started < 4


@pytest.mark.parametrize("path", ["/callbacks/carrierx", "/v1/messages", "/v1/subscriptions"])
async def test_after_a_408_the_connection_closes_at_once(serving: int, path: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", serving)
    started = time.monotonic()
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n{".encode()
        )
        await writer.drain()
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # a close with unread data is a reset
            while chunk := await asyncio.wait_for(reader.read(65536), 8):  # until it closes
                answer += chunk
    finally:
        writer.close()

    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 7  # not the 10 s aiohttp lingers by default


@pytest.mark.parametrize("path", ["/callbacks/carrierx", "/v1/messages", "/v1/subscriptions"])
async def test_a_body_that_cannot_be_decoded_is_400_not_500(
    client: Client, db: asyncpg.Connection, path: str
) -> None:
    answer = await client.post(
        path,
        data=b"this is not gzip at all",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )

    assert answer.status == 400
    assert (await answer.json())["error"]["code"] == "bad_request"
