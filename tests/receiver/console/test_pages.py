"""The console's pages and session, without a browser: what they show, who may see them, the
cookie's flags, and that an action with the console's cookie needs its CSRF token."""

from __future__ import annotations

import html
import re
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from receiver.http.session import COOKIE, csrf_token
from receiver.storage.apikeys import create_key
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]


async def test_the_root_opens_the_console_which_lists_messages(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn)
    sent = await client.post(
        "/v1/messages",
        json={
            "provider": "swift",
            "to": ["+447700900007"],
            "from": "+447700900999",
            "body": "hi",
            "ref": "order-<b>1</b>",
        },
    )
    assert sent.status == 201
    message_id = (await sent.json())["id"]

    root = await client.get("/", allow_redirects=False)
    listing = await client.get("/console")
    page = await client.get(f"/console/messages/{message_id}")
    missing = await client.get("/console/messages/not-an-id")

    assert root.status == 302
    assert root.headers["Location"] == "/console"
    assert listing.status == 200
    text = await listing.text()
    assert "order-&lt;b&gt;1&lt;/b&gt;" in text  # escaped, never markup
    assert f"/console/messages/{message_id}" in text
    assert page.status == 200
    assert "+447700900007" in await page.text()
    assert missing.status == 404
    # no framing by another site, nothing loaded from elsewhere, no inline script
    policy = listing.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self';" in policy
    assert listing.headers["X-Frame-Options"] == "DENY"


async def test_a_number_typed_loosely_is_searched_as_e164(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    """The API takes E.164 only (its document says so); a person types spaces, 00 or no +."""
    client = await sandbox_hub(aiohttp_client, dsn)

    spaced = await client.get(
        "/console?to=%2B44 7700 900123&status=delivered", allow_redirects=False
    )
    international = await client.get(
        "/console/opt-outs?number=0044 7700 900123", allow_redirects=False
    )
    nonsense = await client.get("/console?to=nonsense")

    assert spaced.status == 303
    assert spaced.headers["Location"] == "/console?to=%2B447700900123&status=delivered"
    assert international.headers["Location"] == "/console/opt-outs?number=%2B447700900123"
    assert 'role="alert"' in await nonsense.text()


async def test_a_bad_filter_is_said_on_the_page(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn)
    answer = await client.get("/console?status=nonsense")
    assert answer.status == 200
    assert 'role="alert"' in await answer.text()


async def test_with_keys_on_the_console_needs_a_login_and_the_read_scope(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn, api_auth=True)
    _, reader = await create_key(db, "reader", ["read"])
    _, sender = await create_key(db, "sender", ["send"])

    anonymous = await client.get("/console/messages/x", allow_redirects=False)
    wrong = await client.post("/console/login", data={"key": "smsr_nope"}, allow_redirects=False)
    elsewhere = await client.post(
        "/console/login?next=//evil.example/", data={"key": reader}, allow_redirects=False
    )
    cookie = elsewhere.headers["Set-Cookie"]
    client.session.cookie_jar.clear()
    await client.post("/console/login", data={"key": sender}, allow_redirects=False)
    forbidden = await client.get("/console")

    assert anonymous.status == 303
    assert anonymous.headers["Location"] == "/console/login?next=/console/messages/x"
    assert wrong.status == 401
    assert elsewhere.status == 303
    assert elsewhere.headers["Location"] == "/console"  # never another site
    assert f"{COOKIE}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert forbidden.status == 403
    assert "lacks the &#39;read&#39; scope" in await forbidden.text()


async def test_the_api_takes_the_console_cookie_and_wants_its_csrf_token_to_act(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn, api_auth=True)
    _, key = await create_key(db, "operator", ["send", "read"])
    client.session.cookie_jar.update_cookies({COOKIE: key})
    body = {"provider": "swift", "to": ["+447700900007"], "from": "+447700900999", "body": "hi"}

    read = await client.get("/v1/messages")
    forged = await client.post("/v1/messages", json=body)
    wrong = await client.post("/v1/messages", json=body, headers={"X-CSRF-Token": "0" * 64})
    acted = await client.post("/v1/messages", json=body, headers={"X-CSRF-Token": csrf_token(key)})

    assert read.status == 200
    assert forged.status == 403  # another site's form could send the cookie, not the token
    assert wrong.status == 403
    assert acted.status == 201
    assert await db.fetchval("SELECT count(*) FROM messages") == 1


async def test_logout_needs_the_token_and_clears_the_cookie(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn, api_auth=True)
    _, key = await create_key(db, "reader", ["read"])
    await client.post("/console/login", data={"key": key}, allow_redirects=False)

    refused = await client.post("/console/logout", data={"csrf_token": "x"})
    out = await client.post(
        "/console/logout", data={"csrf_token": csrf_token(key)}, allow_redirects=False
    )
    after = await client.get("/console", allow_redirects=False)

    assert refused.status == 403
    assert out.status == 303
    assert f'{COOKIE}=""' in out.headers["Set-Cookie"]
    assert after.status == 303  # to the login page again


async def test_the_providers_page_draws_a_bar_a_day(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn)
    sent = await client.post(
        "/v1/messages",
        json={"provider": "swift", "to": ["+447700900002"], "from": "+447700900999", "body": "hi"},
    )
    assert sent.status == 201
    await db.execute(  # 30 s after the send exactly, however long the send took
        "UPDATE message_recipients r SET status = 'undelivered', final = true,"
        " updated_at = m.created_at + interval '30 seconds' FROM messages m"
        " WHERE m.id = r.message_id"
    )
    await client.post("/callbacks/swift", data=b"garbage")

    page = await client.get("/console/providers")

    assert page.status == 200
    text = await page.text()
    row = text[text.index('id="provider-swift"') :]
    row = row[: row.index("</tr>")]
    assert 'role="img"' in row
    assert "0.0% of 1 final" in row  # undelivered
    assert "30.0 s" in row  # the median time to the final status, in the chart's text
    assert "1 unparsed" in row


async def test_the_providers_figures_are_computed_at_most_once_a_minute(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn)
    first = await (await client.get("/console/providers")).text()
    sent = await client.post(
        "/v1/messages",
        json={"provider": "swift", "to": ["+447700900007"], "from": "+447700900999", "body": "hi"},
    )
    assert sent.status == 201

    again = await (await client.get("/console/providers")).text()

    def swift_row(page: str) -> str:
        row = page[page.index('id="provider-swift"') :]
        return row[: row.index("</tr>")]

    assert "0 recipients" in swift_row(first)
    assert "0 recipients" in swift_row(again)  # the figures of a moment ago, not recomputed


async def test_the_console_can_do_nothing_its_key_cannot(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn, api_auth=True)
    _, admin = await create_key(db, "admin", ["admin"])
    _, reader = await create_key(db, "reader", ["read"])
    created = await client.post(
        "/v1/subscriptions",
        json={"url": "https://hooks.example.com/x"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert created.status == 201
    subscription_id = (await created.json())["id"]
    await client.post("/console/login", data={"key": reader}, allow_redirects=False)

    page = await client.get("/console/subscriptions")
    callbacks = await client.get("/console/callbacks")
    rotate = await client.post(
        f"/v1/subscriptions/{subscription_id}/rotate-secret",
        headers={"X-CSRF-Token": csrf_token(reader)},
    )

    assert page.status == 403  # the admin scope, as GET /v1/subscriptions
    assert callbacks.status == 403
    assert rotate.status == 403  # the action is the API's, with the API's scopes
    assert "admin" in (await rotate.json())["error"]["message"]


async def test_older_messages_are_a_keyset_page_away(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn)
    for n in range(3):
        sent = await client.post(
            "/v1/messages",
            json={
                "provider": "swift",
                "to": ["+447700900007"],
                "from": "+447700900999",
                "body": "hi",
                "ref": f"page-{n}",
            },
        )
        assert sent.status == 201

    first = await (await client.get("/console?limit=2&provider=swift")).text()
    older = re.search(r'<a rel="next" href="\?([^"]+)"', first)
    assert older is not None
    second = await (await client.get("/console?" + html.unescape(older.group(1)))).text()

    assert "page-2" in first
    assert "page-1" in first
    assert "page-0" not in first
    assert "page-0" in second
    assert "page-2" not in second
    assert "provider=swift" in html.unescape(older.group(1))  # the filters are kept


async def test_the_search_forms_fields_left_at_any_filter_nothing(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    client = await sandbox_hub(aiohttp_client, dsn)

    # What the form sends with only a tenant chosen: every other field empty.
    answer = await client.get(
        "/console?to=&ref=&status=&provider=&tenant=default", allow_redirects=False
    )
    nothing_chosen = await client.get("/console?to=&status=", allow_redirects=False)
    followed = await client.get("/console?to=&ref=&status=&provider=&tenant=default")

    assert answer.status == 303
    assert answer.headers["Location"] == "/console?tenant=default"
    assert nothing_chosen.headers["Location"] == "/console"
    assert followed.status == 200
    assert 'role="alert"' not in await followed.text()
