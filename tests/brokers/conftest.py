"""The broker tests run in `make test-brokers` (which installs nats-server and rabbitmq-server
when they are missing), not in `make test`: each broker starts once for the session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers.servers import NatsServer, RabbitServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/brokers/" in str(item.path):
            item.add_marker(pytest.mark.brokers)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    if shutil.which("nats-server") is None:
        pytest.fail("no nats-server: `make test-brokers` installs Debian's")
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rabbit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    if shutil.which("rabbitmq-server") is None:
        pytest.fail("no rabbitmq-server: `make test-brokers` installs Debian's")
    server = RabbitServer(Path(tmp_path_factory.mktemp("rabbit")))
    server.start()
    yield server
    server.stop()
