"""The document: /openapi.json describes every route the app serves, /docs renders it, and the
rules it states are the ones the server applies (schemathesis drives a real serve from it in
`make test-contract`, tests/contract)."""

from __future__ import annotations

import random
import urllib.request
from typing import Any

import phonenumbers
import pytest
from pydantic import ValidationError

from receiver.app import ROUTES, SANDBOX_ROUTES, create_app
from receiver.config import Settings
from receiver.http.bodies import whole_numbers
from receiver.http.fields import is_e164, is_moment
from receiver.http.openapi import document
from receiver.tenants.routes import TenantIn


def test_every_route_is_in_the_document(dsn: str) -> None:
    app = create_app(Settings(database_url=dsn, sandbox=True), dsn)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None
        and route.method not in ("HEAD", "*")
        and not route.resource.canonical.startswith("/sandbox")
        # the console's pages and the docs' assets are HTML and files, not the API
        and not route.resource.canonical.startswith(("/console", "/docs/assets"))
        and route.resource.canonical != "/"
    }
    documented = {
        (method, path)
        for path, methods in document(ROUTES + SANDBOX_ROUTES)["paths"].items()
        for method in methods
    }

    assert served == documented


def test_the_sandbox_controls_exist_only_in_sandbox_mode(dsn: str) -> None:
    app = create_app(Settings(database_url=dsn, sandbox=False), dsn)
    paths = {route.resource.canonical for route in app.router.routes() if route.resource}

    assert "/v1/sandbox/providers/{name}" not in paths
    assert "/v1/sandbox/providers" not in paths


def test_docs_render_the_document(served_hub: str) -> None:
    """Swagger UI over /openapi.json, its files served by the hub (the page itself is drawn by
    its script: tests/browser tries a call through it)."""
    with urllib.request.urlopen(f"{served_hub}/docs", timeout=5) as answer:
        page = answer.read().decode()
    with urllib.request.urlopen(f"{served_hub}/docs/assets/swagger-ui-bundle.js", timeout=5) as js:
        bundle = js.read()

    assert "/docs/assets/swagger-ui-bundle.js" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing from another site
    assert len(bundle) > 100_000


def test_the_e164_pattern_is_libphonenumbers_possible_lengths() -> None:
    """The document's E.164 rule agrees with libphonenumber on numbers written as the pattern
    says (15 digits at most, no national prefix inside)."""
    generator = random.Random(26)
    disagreements = []
    for _ in range(3000):
        code = generator.choice(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE))
        digits = "".join(generator.choice("123456789") for _ in range(generator.randint(2, 13)))
        number = f"+{code}{digits}"[:16]
        possible = phonenumbers.is_possible_number(phonenumbers.parse(number, None))
        if is_e164(number) and not possible:
            disagreements.append(number)

    assert disagreements == []
    assert is_e164("+447700900123")
    assert [is_moment(f"{year}-01-01T00:00:00Z") for year in (1969, 1970, 9989, 9998, 9999)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert not is_e164("+441")  # too short for the UK, even as a local number
    assert not is_e164("447700900123")
    assert not is_e164("+44 7700 900123")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=-30773651", "limit"),
        ("limit=501", "limit"),
        ("limit=1.5", "limit"),
        ("since=0", "since"),
        ("since=2026-01-01T00:00:00", "since"),  # no zone
        ("since=1969-12-31T00:00:00Z", "since"),
        ("to=447700900123", "to"),
        ("cursor=abc", "cursor"),
        ("limit=\u0665", "limit"),  # an Arabic-Indic 5: a digit to Python, not to the document
        ("to=%2B44\u0667\u0667\u0660\u0660900123", "to"),
        ("since=2026-06-30T23:59:60Z", "since"),  # a leap second: RFC 3339 has it, Python not
    ],
)
async def test_a_parameter_out_of_its_schema_is_a_400_naming_it(
    client: Any, query: str, field: str
) -> None:
    answer = await client.get(f"/v1/messages?{query}")

    assert answer.status == 400, await answer.text()
    details = (await answer.json())["error"]["details"]
    assert [item["field"] for item in details] == [field]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://127.0.0.1:9/hook", "enabled": 0}, "enabled"),
        ({"url": "http://127.0.0.1:9/hook", "enabled": "false"}, "enabled"),
        ({"url": "http://127.0.0.1:9/hook", "description": 5}, "description"),
        ({"url": "http://127.0.0.1:9/" + "a" * 2100}, "url"),  # the document's maxLength
    ],
)
async def test_bodies_are_strict(client: Any, body: dict[str, Any], field: str) -> None:
    """A number is not a boolean, a string is not one either (lax coercion would take both)."""
    answer = await client.post("/v1/subscriptions", json=body)

    assert answer.status == 422, await answer.text()
    assert [d["field"] for d in (await answer.json())["error"]["details"]] == [field]


async def test_a_send_names_its_sender_from_as_documented(client: Any) -> None:
    answer = await client.post(
        "/v1/messages", json={"to": ["+447700900123"], "body": "hi", "sender": "Shop"}
    )

    assert answer.status == 422
    assert [d["field"] for d in (await answer.json())["error"]["details"]] == ["sender"]


async def test_replay_takes_any_time_and_a_future_one_queues_nothing(client: Any) -> None:
    made = await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook"})
    subscription = (await made.json())["id"]

    future = await client.post(
        f"/v1/subscriptions/{subscription}/replay", json={"since": "9998-01-01T00:00:00Z"}
    )
    since_epoch = await client.post(f"/v1/subscriptions/{subscription}/replay", json={"since": 0})

    assert (future.status, await future.json()) == (202, {"queued": 0})
    assert since_epoch.status == 422  # a time is a string


def test_integral_floats_are_integers_and_only_they() -> None:
    assert (
        TenantIn.model_validate_json(
            whole_numbers(b'{"name": "a", "send_burst": 20.0}'), strict=True
        ).send_burst
        == 20
    )
    with pytest.raises(ValidationError):
        TenantIn.model_validate_json(
            whole_numbers(b'{"name": "a", "send_burst": 20.5}'), strict=True
        )
    with pytest.raises(ValidationError):
        TenantIn.model_validate_json(
            whole_numbers(b'{"name": "a", "send_burst": "20"}'), strict=True
        )
