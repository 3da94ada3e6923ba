"""Fuzzing a real `serve` (hypothesis): random methods, paths, query strings, content types and
bodies on every callback route and the send API. Never a 5xx but 503 (and 502, the provider's
refusal, on the send API), and every callback acknowledged is stored."""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normalizers.registry import DEFAULT_REGISTRY
from tests.corpus import Case, load_cases

METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]) | (
    st.from_regex(r"[A-Z]{3,10}", fullmatch=True)
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=xyz",
        "application/json; charset=latin-1",
        "",
    ]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)
# Field names the normalisers look for, so that some bodies get past the first checks.
FIELDS = st.sampled_from(
    [
        "message_sid",
        "status",
        "to",
        "from",
        "messageID",
        "statuses",
        "message_id",
        "recipient",
        "delivery_status",
        "type",
        "sms",
        "Message.Sid",
        "Event",
        "timestamp",
        "date_status_changed",
        "callback_type",
    ]
)
BODIES = st.one_of(
    st.binary(max_size=1500),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(FIELDS, JSON_VALUES, max_size=8).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(FIELDS, st.text(max_size=40), max_size=8).map(lambda d: urlencode(d).encode()),
)
QUERIES = st.one_of(
    st.just(""),
    st.text(max_size=120).map(lambda text: quote(text, safe="=&;")),
    st.dictionaries(FIELDS, st.text(max_size=30), max_size=6).map(urlencode),
)
PROVIDERS = st.sampled_from(sorted(DEFAULT_REGISTRY)) | st.from_regex(
    r"[a-z0-9_.-]{1,16}", fullmatch=True
)


def call(
    base: str,
    method: str,
    path: str,
    body: bytes,
    content_type: str,
    extra: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    where = urlsplit(base)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
    headers = ({"Content-Type": content_type} if content_type else {}) | (extra or {})
    try:
        connection.request(method, path, body=body or None, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


async def test_callback_routes_take_anything_without_a_server_error(
    served_hub: str, db: asyncpg.Connection
) -> None:
    acknowledged: list[str] = []
    statuses: set[int] = set()

    @given(
        method=METHODS,
        provider=PROVIDERS,
        token=st.none() | st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
        query=QUERIES,
        content_type=CONTENT_TYPES,
        body=BODIES,
    )
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    def exercise(
        method: str, provider: str, token: str | None, query: str, content_type: str, body: bytes
    ) -> None:
        path = f"/callbacks/{provider}" + (f"/{token}" if token else "")
        status, answer = call(
            served_hub, method, path + (f"?{query}" if query else ""), body, content_type
        )
        statuses.add(status)
        assert status < 500 or status == 503, (status, answer[:300])
        if status in (200, 202):
            acknowledged.append(json.loads(answer)["raw_id"])

    exercise()

    assert {200, 202} & statuses  # some got through the checks (not all refused at the door)
    stored = await db.fetch(
        "SELECT id FROM raw_callbacks WHERE id = ANY($1::uuid[])",
        [uuid.UUID(raw_id) for raw_id in acknowledged],
    )
    assert len(stored) == len(set(acknowledged))  # every acknowledged callback is stored


def mutated(value: Any, data: st.DataObject) -> Any:
    """The value with one of its fields dropped, replaced or added, at any depth."""
    if isinstance(value, dict) and value:
        key = data.draw(st.sampled_from(sorted(value)))
        change = data.draw(st.sampled_from(["drop", "replace", "add", "deeper"]))
        copy = dict(value)
        if change == "drop":
            del copy[key]
        elif change == "replace":
            copy[key] = data.draw(JSON_VALUES)
        elif change == "add":
            copy[data.draw(FIELDS)] = data.draw(JSON_VALUES)
        else:
            copy[key] = mutated(copy[key], data)
        return copy
    if isinstance(value, list) and value:
        index = data.draw(st.integers(0, len(value) - 1))
        return [*value[:index], mutated(value[index], data), *value[index + 1 :]]
    return data.draw(JSON_VALUES) if data.draw(st.booleans()) else value


async def test_real_callbacks_mutated_never_cause_a_server_error(
    served_hub: str, db: asyncpg.Connection
) -> None:
    cases = load_cases()
    acknowledged: list[str] = []

    @given(case=st.sampled_from(cases), data=st.data())
    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    def exercise(case: Case, data: st.DataObject) -> None:
        body = case.data["request"].get("body")
        if isinstance(body, dict | list):
            payload = json.dumps(mutated(body, data)).encode()
        else:
            payload = case.body
        query = case.query
        if query and data.draw(st.booleans()):
            pairs = dict(parse_qsl(query, keep_blank_values=True))
            query = urlencode(mutated(pairs, data) if pairs else pairs)
        path = f"/callbacks/{case.provider}" + (f"?{query}" if query else "")
        status, answer = call(
            served_hub,
            case.method,
            path,
            payload,
            case.headers.get("Content-Type", ""),
        )
        assert status < 500 or status == 503, (status, answer[:300])
        if status in (200, 202):
            acknowledged.append(json.loads(answer)["raw_id"])

    exercise()

    stored = await db.fetchval(
        "SELECT count(*) FROM raw_callbacks WHERE id = ANY($1::uuid[])",
        [uuid.UUID(raw_id) for raw_id in acknowledged],
    )
    assert stored == len(set(acknowledged)) > 100


async def test_the_send_api_takes_anything_without_a_server_error(
    served_hub: str, db: asyncpg.Connection
) -> None:
    statuses: set[int] = set()
    valid_ish = st.fixed_dictionaries(
        {
            "provider": st.sampled_from(sorted(DEFAULT_REGISTRY)) | st.text(max_size=10),
            "to": st.lists(st.from_regex(r"\+?[0-9]{0,16}", fullmatch=True), max_size=3)
            | JSON_VALUES,
            "from": st.text(max_size=20),
            "body": st.text(max_size=200),
        },
        optional={"ref": st.text(max_size=50), "options": JSON_VALUES, "ttl": JSON_VALUES},
    ).map(lambda d: json.dumps(d).encode())

    @given(
        method=st.sampled_from(["POST", "PUT", "GET"]),
        content_type=CONTENT_TYPES,
        body=BODIES | valid_ish,
        idempotency=st.none()
        | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=300),
    )
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    def exercise(method: str, content_type: str, body: bytes, idempotency: str | None) -> None:
        extra = {"Idempotency-Key": idempotency} if idempotency is not None else {}
        status, answer = call(served_hub, method, "/v1/messages", body, content_type, extra)
        statuses.add(status)
        assert status < 500 or status in (502, 503), (status, answer[:300])
        if status >= 400:
            assert json.loads(answer)["error"]["code"]  # one error shape, no stack trace

    exercise()

    assert 422 in statuses
