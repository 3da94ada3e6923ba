"""The hub of the correction tests: its dispatcher delivers to loopback subscribers at once."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from receiver.app import create_app
from tests.receiver.delivery.test_delivery import Client, Subscriber, hub_settings


@pytest.fixture
async def hub(aiohttp_client: Any, dsn: str, db: asyncpg.Connection) -> Client:
    """The hub with its dispatcher, delivering to loopback subscribers at once."""
    client: Client = await aiohttp_client(create_app(hub_settings(dsn), dsn))
    return client


@pytest.fixture
async def subscriber(aiohttp_server: Any) -> Subscriber:
    listener = Subscriber()
    app = web.Application()
    app.router.add_post("/hook", listener.handle)
    server: TestServer = await aiohttp_server(app)
    listener.url = str(server.make_url("/hook"))
    return listener
