"""/v1/routes: made, read, replaced and deleted by the operator, every change kept (who, when,
before, after), and every bad route a 422 naming its field."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]

UK = {"name": "uk", "match": {"country": ["GB"]}, "providers": ["swift", "carrierx"]}


async def test_the_issues_shape_makes_a_priority_route_kept_with_its_history(
    client: Client,
) -> None:
    made = await client.post("/v1/routes", json=UK)
    route = await made.json()
    assert made.status == 201, route
    assert (route["name"], route["choose"], route["providers"]) == (
        "uk",
        "priority",
        ["swift", "carrierx"],
    )
    assert route["match"]["country"] == ["GB"]

    replaced = await client.put(
        "/v1/routes/uk", json={"providers": ["carrierx"], "match": {"country": ["GB"]}}
    )
    assert replaced.status == 200
    assert (await replaced.json())["providers"] == ["carrierx"]
    listed = await (await client.get("/v1/routes")).json()
    assert [r["name"] for r in listed["data"]] == ["uk"]

    deleted = await client.delete("/v1/routes/uk")
    assert deleted.status == 204
    assert (await client.get("/v1/routes/uk")).status == 404

    changes = (await (await client.get("/v1/route-changes?route=uk")).json())["data"]
    assert [c["action"] for c in changes] == ["delete", "update", "create"]
    delete, update, create = changes
    assert create["before"] is None
    assert create["after"]["providers"] == ["swift", "carrierx"]
    assert update["before"]["providers"] == ["swift", "carrierx"]
    assert update["after"]["providers"] == ["carrierx"]
    assert delete["before"]["providers"] == ["carrierx"]
    assert delete["after"] is None
    assert all(c["who"] == "operator (API_AUTH off)" and c["at"] for c in changes)


async def test_the_same_route_again_changes_nothing_and_keeps_no_change(client: Client) -> None:
    await client.post("/v1/routes", json=UK)
    again = await client.put("/v1/routes/uk", json={k: v for k, v in UK.items() if k != "name"})

    assert again.status == 200
    changes = (await (await client.get("/v1/route-changes")).json())["data"]
    assert [c["action"] for c in changes] == ["create"]


async def test_a_route_of_an_existing_name_is_a_409(client: Client) -> None:
    await client.post("/v1/routes", json=UK)
    again = await client.post("/v1/routes", json=UK)

    assert again.status == 409
    assert (await again.json())["error"]["code"] == "route_exists"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"providers": ["swift", "pigeon"]}, "providers.1"),
        ({"providers": []}, "providers"),
        ({"providers": ["swift", "swift"]}, "providers"),
        ({"weights": {"swift": 0}}, "weights.swift"),
        ({"weights": {"swift": -5}}, "weights.swift"),
        ({"weights": {"telecom23": 2}}, "weights.telecom23"),
        ({"match": {"country": ["XX"]}}, "match.country"),
        ({"match": {"country": ["gb"]}}, "match.country"),
        ({"match": {"prefix": ["44"]}}, "match.prefix.0"),
        ({"choose": "fastest"}, "choose"),
        ({"choose": "cheapest"}, "prices"),
        ({"prices": {"swift": {"ZZ": 0.1}}}, "prices.swift.ZZ"),
        ({"redeliver": {"on": ["delivered"]}}, "redeliver.on.0"),
        ({"name": "UK"}, "name"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_a_bad_route_is_a_422_naming_the_field(
    client: Client, change: dict[str, Any], field: str
) -> None:
    answer = await client.post("/v1/routes", json=UK | change)

    body = await answer.json()
    assert answer.status == 422, body
    assert field in [detail["field"] for detail in body["error"]["details"]], body
    assert (await client.get("/v1/routes")).status == 200
    assert (await (await client.get("/v1/routes")).json())["data"] == []


async def test_routes_are_tried_by_position_then_name(
    client: Client, db: asyncpg.Connection
) -> None:
    await client.post("/v1/routes", json={"name": "b", "providers": ["swift"], "position": 5})
    await client.post("/v1/routes", json={"name": "a", "providers": ["swift"], "position": 5})
    await client.post("/v1/routes", json={"name": "first", "providers": ["swift"], "position": 1})
    await client.post("/v1/routes", json={"name": "last", "providers": ["swift"]})

    listed = (await (await client.get("/v1/routes")).json())["data"]
    assert [r["name"] for r in listed] == ["first", "a", "b", "last"]
