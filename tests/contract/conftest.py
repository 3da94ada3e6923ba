"""The contract tests run in `make test-contract`, not in `make test`: schemathesis drives a real
`serve --sandbox` with API keys on, and a client generated from its document tells a story."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import free_port, running_serve, serve_env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/contract/" in str(item.path):
            item.add_marker(pytest.mark.contract)


CALLBACK_TOKEN = "contract-token-for-the-simulated-swift-provider"


@dataclass(frozen=True)
class KeyedHub:
    url: str
    key: str  # an operator's key with every scope
    dsn: str


def create_key(dsn: str, *options: str) -> str:
    made = subprocess.run(
        [sys.executable, "-m", "receiver", "keys", "create", *options],
        env={"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found = re.search(r"(smsr_\S+)", made.stdout)
    assert found, made.stdout
    return found.group(1)


@pytest.fixture(scope="module")
def keyed_hub(dsn: str) -> Iterator[KeyedHub]:
    key = create_key(
        dsn,
        "--operator",
        "--scope",
        "admin",
        "--scope",
        "send",
        "--scope",
        "read",
        "--name",
        "contract",
    )
    port = free_port()
    env = serve_env(
        dsn,
        port,
        api_auth=True,
        SEND_BURST="100000",
        # Brokers of each kind for destinations to name: nothing listens there (their
        # deliveries fail, as the dispatcher's tests show).
        DESTINATIONS__BUS__URL=f"nats://127.0.0.1:{free_port()}",
        DESTINATIONS__QUEUE__URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        SWIFT__CALLBACK_TOKEN=CALLBACK_TOKEN,
    )
    with running_serve(port, env, "--sandbox") as url:
        yield KeyedHub(url, key, dsn)
