"""A client generated from the hub's /openapi.json by openapi-python-client (pinned in
pyproject), as a downstream team would make it, tells a whole story against a real serve:
subscribe, send, read the message with its timeline, page the feed, cancel a held message. The
generated code is made here, in the test run, and never committed."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.contract.conftest import KeyedHub


def generated_client(hub: KeyedHub, where: Path) -> Any:
    document = where / "openapi.json"
    with urllib.request.urlopen(f"{hub.url}/openapi.json", timeout=10) as answer:
        document.write_bytes(answer.read())
    generator = Path(sys.executable).parent / "openapi-python-client"
    subprocess.run(
        [str(generator), "generate", "--path", str(document), "--meta", "none"],
        cwd=where,
        check=True,
        capture_output=True,
        timeout=300,
    )
    sys.path.insert(0, str(where))
    return importlib.import_module("sms_receiver_client")


def test_a_generated_client_tells_the_whole_story(keyed_hub: KeyedHub, tmp_path: Path) -> None:
    client_package = generated_client(keyed_hub, tmp_path)
    api = importlib.import_module("sms_receiver_client.api.default")
    models = importlib.import_module("sms_receiver_client.models")
    client = client_package.AuthenticatedClient(base_url=keyed_hub.url, token=keyed_hub.key)

    def call(operation: str, **arguments: Any) -> Any:
        module = importlib.import_module(f"sms_receiver_client.api.default.{operation}")
        answer = module.sync_detailed(client=client, **arguments)
        assert answer.status_code < 300, (operation, answer.status_code, answer.content)
        return answer.parsed

    assert api is not None
    subscription = call(
        "post_v1_subscriptions",
        body=models.SubscriptionIn(url=f"{keyed_hub.url}/healthz"),
    )
    assert subscription.secret.startswith("whsec_")

    sent = call(
        "post_v1_messages",
        body=models.SendMessageIn(to=["+447700900321"], body="Hello", provider="swift"),
    )
    deadline = time.monotonic() + 30
    while True:
        message = call("get_v1_messages_id", id=sent.id)
        if message.recipients[0].status == "delivered" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert message.recipients[0].status == "delivered"
    timeline = [(str(event.type_), str(event.status)) for event in message.events]
    assert ("message.status", "delivered") in timeline

    seen: list[str] = []
    after = None
    for _ in range(20):  # a page of 2 at a time, to the end of the feed
        page = call("get_v1_events", after=after, limit=2)
        seen += [event.id for event in page.data]
        if not page.data:
            break
        after = page.next_cursor
    assert len(seen) == len(set(seen)) >= 2

    later = datetime.now(UTC) + timedelta(hours=1)
    held = call(
        "post_v1_messages",
        body=models.SendMessageIn(
            to=["+447700900322"], body="Later", provider="swift", send_at=later
        ),
    )
    cancelled = call("post_v1_messages_id_cancel", id=held.id)
    assert cancelled.cancelled
    assert call("get_v1_messages_id", id=held.id).recipients[0].status == "cancelled"
