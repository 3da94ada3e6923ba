"""The console in a real Chromium against a real `serve` with the simulated providers: a
message sent through the API appears with its statuses without a reload, its timeline opens,
and with keys on the operator logs in and out, and a tenant's key sees its tenant's messages
alone while an operator key sees every tenant's."""

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

from receiver.storage.apikeys import create_key
from receiver.storage.tenants import create_tenant
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


def send(
    url: str, ref: str, to: str = "+447700900001", key: str | None = None, text: str = "hi"
) -> str:
    body = {"provider": "carrierx", "to": [to], "from": "+447700900999", "body": text, "ref": ref}
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


def log_in(page: Page, url: str, key: str) -> None:
    page.goto(url + "/console")
    expect(page).to_have_url(re.compile(r"/console/login"))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Messages")).to_be_visible()


def test_a_tenant_sees_its_own_messages_and_the_operator_every_tenants(
    keyed_hub: str, dsn: str, page: Page
) -> None:
    # in a thread of its own: Playwright's synchronous API runs an event loop in this one
    with ThreadPoolExecutor(1) as thread:
        keys = thread.submit(asyncio.run, two_tenants_and_the_operator(dsn)).result()
    tag = uuid.uuid4().hex[:8]
    alpha_ref, beta_ref = f"alpha-{tag}", f"beta-{tag}"
    # numbers of their own too: a leak would show in the recipients column, not only the ref's
    send(keyed_hub, alpha_ref, "+447700900021", keys["alpha"], text="from alpha")
    beta_id = send(keyed_hub, beta_ref, "+447700900022", keys["beta"], text="from beta")

    log_in(page, keyed_hub, keys["alpha"])
    expect(page.locator("header")).to_contain_text("key alpha-app of the tenant alpha")
    rows = page.locator("#rows")
    expect(rows.locator("tr", has_text=alpha_ref)).to_be_visible()
    expect(rows).not_to_contain_text(beta_ref)  # the rows are there: absent means not sent
    expect(rows).not_to_contain_text("+447700900022")
    expect(page.locator("td.tenant")).to_have_count(0)  # one tenant's console: no column
    expect(page.locator("select[name=tenant]")).to_have_count(0)

    # The live refresh asks again with alpha's key: beta's later message, stored before alpha's
    # later one, would be in the rows that alpha's brought if the refresh leaked.
    expect(page.locator("#live-state")).to_contain_text("live updates: on")
    send(keyed_hub, f"{beta_ref}-late", "+447700900022", keys["beta"], text="beta again")
    send(keyed_hub, f"{alpha_ref}-late", "+447700900021", keys["alpha"], text="alpha again")
    expect(rows.locator("tr", has_text=f"{alpha_ref}-late")).to_be_visible()  # no reload
    expect(rows).not_to_contain_text(beta_ref)

    answer = page.goto(f"{keyed_hub}/console/messages/{beta_id}")
    assert answer is not None
    assert answer.status == 404  # as if it did not exist
    expect(page.get_by_role("heading", name="No such message")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    log_in(page, keyed_hub, keys["operator"])
    expect(page.locator("header")).to_contain_text("key ops (operator)")
    # by the ref's cell alone: the later messages' refs begin with the same words
    alpha_row = rows.locator("tr", has=page.get_by_role("cell", name=alpha_ref, exact=True))
    beta_row = rows.locator("tr", has=page.get_by_role("cell", name=beta_ref, exact=True))
    expect(page.get_by_role("columnheader", name="Tenant")).to_be_visible()
    expect(alpha_row.locator("td.tenant")).to_have_text("alpha")
    expect(beta_row.locator("td.tenant")).to_have_text("beta")

    expect(page.locator("select[name=tenant] option", has_text="beta")).to_have_count(1)
    # by the URL, not the Search button: the form sends its blank fields too, and a blank status
    # or number is refused as a filter
    page.goto(f"{keyed_hub}/console?tenant=beta")
    expect(page.locator("select[name=tenant]")).to_have_value("beta")
    expect(beta_row.locator("td.tenant")).to_have_text("beta")
    expect(rows).not_to_contain_text(alpha_ref)
    expect(rows.locator("td.tenant")).to_have_text(["beta", "beta"])  # beta's two, no other


async def two_tenants_and_the_operator(dsn: str) -> dict[str, str]:
    """The tenants alpha and beta with a key each that sends (alpha's reads too), and an
    operator key (of no tenant) that reads: their secrets by who holds them."""
    connection = await asyncpg.connect(dsn)
    try:
        for tenant in ("alpha", "beta"):
            await create_tenant(connection, tenant)
        _, alpha = await create_key(connection, "alpha-app", ["send", "read"], "alpha")
        _, beta = await create_key(connection, "beta-app", ["send"], "beta")
        _, operator = await create_key(connection, "ops", ["read"], None)
        return {"alpha": alpha, "beta": beta, "operator": operator}
    finally:
        await connection.close()


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


def test_a_route_is_made_refused_edited_and_deleted_in_the_console(
    open_hub: str, page: Page
) -> None:
    page.goto(open_hub + "/console")
    page.get_by_role("link", name="Routes").click()
    editor = page.get_by_role("textbox", name="Add or replace a route")

    editor.fill('{"name": "browser", "providers": ["swift", "pigeon"]}')
    page.get_by_role("button", name="Save the route").click()
    expect(page.locator("#out-editor")).to_contain_text("providers.1: unknown provider")

    editor.fill('{"name": "browser", "match": {"country": ["GB"]}, "providers": ["swift"]}')
    page.get_by_role("button", name="Save the route").click()
    row = page.locator("#route-browser")
    expect(row).to_contain_text("country: GB")  # reloaded

    row.get_by_role("button", name="Edit").click()
    edited = editor.input_value().replace('"swift"\n', '"swift",\n    "carrierx"\n')
    editor.fill(edited)
    page.get_by_role("button", name="Save the route").click()
    expect(page.locator("#route-browser")).to_contain_text("swift → carrierx")
    expect(page.locator("table.changes")).to_contain_text("update")
    shot(page, "routes", full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#route-browser").get_by_role("button", name="Delete").click()
    expect(page.locator("#route-browser")).to_have_count(0)


def test_a_handset_is_added_to_the_opt_out_list_and_removed_in_the_console(
    open_hub: str, page: Page
) -> None:
    page.goto(open_hub + "/console")
    page.get_by_role("link", name="Opt-outs").click()
    form = page.locator("#optout-form")
    form.get_by_label("Number").fill("+447700900061")
    form.get_by_label("From").fill("+447700900999")
    form.get_by_role("button", name="Add").click()
    row = page.locator("tr", has=page.get_by_role("rowheader", name="+447700900061"))
    expect(row).to_contain_text("+447700900999")  # reloaded
    expect(row).to_contain_text("api")
    shot(page, "opt-outs", full_page=True)

    form = page.locator("#optout-form")
    form.get_by_label("Number").fill("12")
    form.get_by_role("button", name="Add").click()
    expect(page.locator("#out-add")).to_contain_text("number")

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Remove").click()
    expect(page.get_by_role("rowheader", name="+447700900061")).to_have_count(0)
