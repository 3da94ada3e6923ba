"""The contract: /openapi.json describes every route the app serves, /docs renders it, and
schemathesis, driving a real `serve` process from the document, finds no 5xx and no answer that
breaks its schema."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from receiver.app import ROUTES, SANDBOX_ROUTES, create_app
from receiver.config import Settings
from receiver.http.openapi import document


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


@pytest.fixture(scope="module")
def api_schema(served_hub: str) -> Any:
    loaded = schemathesis.openapi.from_url(f"{served_hub}/openapi.json")
    return loaded.exclude(path="/v1/events/stream")  # an endless answer, tested on its own


def test_the_api_keeps_its_contract(api_schema: Any) -> None:
    """Every operation with generated requests (schemathesis' strategies driven by hypothesis,
    not its pytest plugin, which this pytest does not load)."""
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def exercise(case: Any) -> None:
            case.call_and_validate(checks=checks, timeout=20)

        exercise()


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
