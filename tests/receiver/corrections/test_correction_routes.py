"""Correction runs through the API (and so the console's buttons): a dry run started, followed
to its end, then applied over the same window; bad requests refused naming the field."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.receiver.corrections.test_correction_run import (
    ALICE,
    BOB,
    delivered_means_sent,
    recipients,
    three_messages,
)
from tests.receiver.delivery.test_delivery import Client, eventually


async def finished(hub: Client, run_id: str) -> dict[str, Any]:
    answers: list[dict[str, Any]] = []

    async def ended() -> bool:
        answers.append(await (await hub.get(f"/v1/correction-runs/{run_id}")).json())
        return bool(answers[-1]["state"] != "running")

    await eventually(ended, timeout_s=30)
    return answers[-1]


async def test_a_dry_run_then_its_apply_through_the_api(
    hub: Client,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await three_messages(hub, db)
    delivered_means_sent(monkeypatch)

    started = await hub.post("/v1/correction-runs", json={"provider": "carrierx"})
    assert started.status == 202, await started.text()
    dry = await finished(hub, (await started.json())["id"])
    assert (dry["mode"], dry["state"], dry["examined"], dry["total"]) == (
        "dry_run",
        "finished",
        4,
        4,
    )
    assert dry["counts"]["recipients"] == {"delivered -> sent": 2}
    assert dry["versions"]["carrierx"].startswith("carrierx@")
    assert (await recipients(db))[ALICE][0] == "delivered"  # a dry run changes nothing

    page = await hub.get("/console/corrections")
    html = await page.text()
    assert page.status == 200
    assert f"/v1/correction-runs/{dry['id']}/apply" in html
    assert "delivered -&gt; sent: 2" in html

    applied = await hub.post(f"/v1/correction-runs/{dry['id']}/apply")
    assert applied.status == 202, await applied.text()
    run = await finished(hub, (await applied.json())["id"])
    assert (run["mode"], run["state"], run["provider"]) == ("apply", "finished", "carrierx")
    assert run["until"] == dry["until"]  # exactly the window the dry run looked at
    assert (await recipients(db))[ALICE][0] == "sent"
    assert (await recipients(db))[BOB][0] == "sent"

    again = await hub.post(f"/v1/correction-runs/{run['id']}/apply")
    assert again.status == 409  # only a dry run is applied
    listed = await (await hub.get("/v1/correction-runs")).json()
    assert [r["id"] for r in listed["data"]] == [run["id"], dry["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"provider": "nope"}, "provider"),
        ({"since": "2026-01-02T00:00:00"}, "since"),  # no time zone
        ({"mode": "now"}, "mode"),
    ],
)
async def test_a_run_that_cannot_start_is_refused_naming_the_field(
    hub: Client,
    body: dict[str, Any],
    field: str,
) -> None:
    answer = await hub.post("/v1/correction-runs", json=body)
    assert answer.status == 422, await answer.text()
    error = (await answer.json())["error"]
    assert field in {item["field"] for item in error["details"]}


@pytest.mark.parametrize(
    "body",
    [
        {"until": "2999-01-01T00:00:00Z"},
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
    ],
)
async def test_a_window_that_holds_nothing_is_a_run_that_finds_nothing(
    hub: Client, body: dict[str, Any]
) -> None:
    """Any window the document allows is a run (it cannot state "since before until"): one
    ending before it begins holds no callback, and one ending in time to come ends when the run
    starts (its window is fixed then: an apply of it sees what the dry run saw)."""
    answer = await hub.post("/v1/correction-runs", json=body)

    assert answer.status == 202, await answer.text()
    run = await answer.json()
    assert run["until"][:10] == min(body["until"][:10], run["started_at"][:10])
    if "since" in body:
        assert run["total"] == 0


async def test_an_unknown_run_is_404(hub: Client) -> None:
    assert (await hub.get("/v1/correction-runs/nope")).status == 404
    stop = await hub.post("/v1/correction-runs/00000000-0000-0000-0000-000000000000/stop")
    assert stop.status == 404
