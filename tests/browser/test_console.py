"""The console in a real Chromium against a real `serve` with the simulated providers: a
message sent through the API appears with its statuses without a reload, its timeline opens,
and with keys on the operator logs in and out."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from playwright.sync_api import Page, expect

from tests.helpers import free_port, running_serve

SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"


def shot(page: Page, name: str, *, full_page: bool = False) -> None:
    """The README's screenshots, taken again with UPDATE_SCREENSHOTS=1 (not on every run: the
    tree stays clean)."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=full_page)


def hub_env(dsn: str, port: int, **changes: str) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn,
        "API_AUTH": "false",
        "LOG_LEVEL": "warning",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "SANDBOX_DELAY_S": "0.3",
        "SEND_BURST": "100000",
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        **changes,
    }


@pytest.fixture(scope="module")
def open_hub(dsn: str) -> Iterator[str]:
    port = free_port()
    with running_serve(port, hub_env(dsn, port), "--sandbox") as url:
        yield url


@pytest.fixture(scope="module")
def keyed_hub(dsn: str) -> Iterator[str]:
    port = free_port()
    with running_serve(port, hub_env(dsn, port, API_AUTH="true"), "--sandbox") as url:
        yield url


def send(url: str, ref: str, to: str = "+447700900001", key: str | None = None) -> str:
    body = {"provider": "carrierx", "to": [to], "from": "+447700900999", "body": "hi", "ref": ref}
    request = urllib.request.Request(
        f"{url}/v1/messages",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {key}"} if key else {}),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        message_id: str = json.loads(answer.read())["id"]
        return message_id


def new_key(dsn: str, *scopes: str) -> str:
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "receiver",
            "keys",
            "create",
            "--name",
            "browser",
            *[arg for scope in scopes for arg in ("--scope", scope)],
        ],
        env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    match = re.search(r"(smsr_\S+)", printed)
    assert match is not None, printed
    return match.group(1)


def test_a_sent_message_appears_live_and_its_timeline_opens(open_hub: str, page: Page) -> None:
    page.goto(open_hub + "/")
    expect(page).to_have_url(re.compile(r"/console$"))
    expect(page.get_by_role("heading", name="Messages")).to_be_visible()
    expect(page.locator("#live-state")).to_contain_text("live updates: on")

    ref = f"browser-{uuid.uuid4().hex[:8]}"
    message_id = send(open_hub, ref)

    row = page.locator("#rows tr", has_text=ref)
    expect(row).to_be_visible()  # no reload: the event stream brought it
    expect(row).to_contain_text("delivered")
    shot(page, "messages")

    row.get_by_role("link").click()
    expect(page).to_have_url(re.compile(f"/console/messages/{message_id}$"))
    timeline = page.locator("table.timeline tbody tr")
    expect(timeline.last).to_contain_text("delivered")
    expect(page.locator("table.timeline")).to_contain_text("→")
    shot(page, "message", full_page=True)

    page.locator("table.timeline a").last.click()  # the report that said delivered
    expect(page.get_by_role("heading", name=re.compile("Raw callback"))).to_be_visible()
    expect(page.locator("pre.body")).to_contain_text("delivered")

    page.get_by_role("link", name="Providers").click()
    expect(page.locator("#provider-carrierx svg[role=img]").first).to_be_visible()
    shot(page, "providers", full_page=True)


def test_keyboard_alone_reaches_a_message(open_hub: str, page: Page) -> None:
    ref = f"keys-{uuid.uuid4().hex[:8]}"
    send(open_hub, ref)
    page.goto(f"{open_hub}/console?ref={ref}")
    expect(page.locator("#rows")).to_contain_text(ref)
    link = page.locator("#rows a").first
    link.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile("Message"))).to_be_visible()


def test_with_keys_on_the_operator_logs_in_and_out(keyed_hub: str, dsn: str, page: Page) -> None:
    key = new_key(dsn, "read")
    page.goto(keyed_hub + "/console")
    expect(page).to_have_url(re.compile(r"/console/login"))
    shot(page, "login")
    page.get_by_label("API key").fill("smsr_wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")

    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Messages")).to_be_visible()
    expect(page.locator("header")).to_contain_text("key browser")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "smsr_console"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie").find("smsr_console") == -1  # scripts cannot read it
    expect(page.locator("#live-state")).to_contain_text("live updates: on")  # the cookie's key

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/console/login"))
    page.goto(keyed_hub + "/console")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_the_api_docs_try_a_call_against_the_running_hub(open_hub: str, page: Page) -> None:
    page.goto(open_hub + "/docs")
    operation = page.locator("#operations-default-get_healthz, .opblock-get", has_text="/healthz")
    operation.first.locator(".opblock-summary").click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()
    status = page.locator(".live-responses-table tr.response .response-col_status").first
    expect(status).to_have_text("200")
    shot(page, "docs")


def test_an_unreadable_callback_is_listed_and_reprocessed(open_hub: str, page: Page) -> None:
    garbage = urllib.request.Request(
        f"{open_hub}/callbacks/swift",
        data=b"not a report at all",
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    with urllib.request.urlopen(garbage, timeout=10) as answer:
        assert answer.status == 202  # kept, unparsed
        raw_id = json.loads(answer.read())["raw_id"]

    page.goto(open_hub + "/console")
    page.get_by_role("link", name="Callbacks").click()
    row = page.locator(f"#raw-{raw_id}")
    expect(row).to_contain_text("swift")
    shot(page, "callbacks")
    row.get_by_role("button", name="Reprocess").click()
    expect(row.locator("output")).to_contain_text("still unparsed")  # today's normaliser agrees

    row.get_by_role("link").click()
    expect(page.locator("pre.body")).to_have_text("not a report at all")


def test_a_subscription_is_disabled_enabled_and_its_secret_rotated(
    open_hub: str, dsn: str, page: Page
) -> None:
    created = urllib.request.Request(
        f"{open_hub}/v1/subscriptions",
        data=json.dumps({"url": "http://127.0.0.1:9/hook", "description": "browser"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(created, timeout=10) as answer:
        subscription_id = json.loads(answer.read())["id"]

    page.goto(open_hub + "/console")
    page.get_by_role("link", name="Subscriptions").click()
    section = page.locator(f"#sub-{subscription_id}")
    expect(section).to_contain_text("enabled")
    expect(section.locator(".backlog")).to_contain_text("waiting")

    section.get_by_role("button", name="Disable").click()
    expect(section.get_by_role("button", name="Enable")).to_be_visible()  # reloaded
    expect(section).to_contain_text("disabled")
    section.get_by_role("button", name="Enable").click()
    expect(section.get_by_role("button", name="Disable")).to_be_visible()

    page.once("dialog", lambda dialog: dialog.accept())
    section.get_by_role("button", name="Rotate secret").click()
    expect(section.locator("output")).to_contain_text("new secret (shown once): whsec_")
    section.get_by_role("button", name="Replay the last 24 h").click()
    expect(section.locator("output")).to_contain_text("queued")

    # in a thread of its own: Playwright's synchronous API runs an event loop in this one
    with ThreadPoolExecutor(1) as thread:
        delivery_id = thread.submit(asyncio.run, given_up_delivery(dsn)).result()
    page.reload()
    row = page.locator("tr", has=page.locator(f"#retry-{delivery_id}"))
    row.get_by_role("button", name="Retry").click()
    expect(row.locator("output")).to_contain_text("queued again")
    shot(page, "subscriptions", full_page=True)


async def given_up_delivery(dsn: str) -> int:
    """A delivery given up on (as after its last retry), of a subscription of its own, disabled
    so that no dispatcher takes it again meanwhile."""
    connection = await asyncpg.connect(dsn)
    try:
        subscription_id = uuid.uuid4()
        await connection.execute(
            "INSERT INTO subscriptions (id, url, secret, enabled)"
            " VALUES ($1, 'http://127.0.0.1:9/other', 's', false)",
            subscription_id,
        )
        delivery_id: int = await connection.fetchval(
            "INSERT INTO deliveries (subscription_id, event_id, status, attempts, last_status,"
            " last_error) SELECT $1, id, 'failed', 8, 500, 'server error' FROM events LIMIT 1"
            " RETURNING id",
            subscription_id,
        )
        return delivery_id
    finally:
        await connection.close()
