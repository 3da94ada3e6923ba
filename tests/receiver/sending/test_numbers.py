"""Phone numbers by libphonenumber: a `to` that cannot be sent to is a 422 naming its index; each
recipient keeps its country; SEND_ALLOWED_COUNTRIES and a daily recipient quota per key guard
against SMS pumping; national numbers in callbacks are read in the provider's region."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr, ValidationError

from normalizers.base import to_e164
from receiver.config import ProviderSettings, Settings
from receiver.storage.apikeys import create_key
from receiver.storage.tenants import create_tenant
from tests.helpers import sandbox_hub

Client = TestClient[Any, Any]


def to(*numbers: str, provider: str = "carrierx") -> dict[str, Any]:
    return {"provider": provider, "to": list(numbers), "from": "+447400900999", "body": "hi"}


async def test_a_number_that_cannot_exist_is_422_naming_its_index(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)

    answer = await hub.post("/v1/messages", json=to("+447400900001", "+999123456", "07400900001"))

    assert answer.status == 422
    fields = [d["field"] for d in (await answer.json())["error"]["details"]]
    assert fields == ["to.1", "to.2"]  # no such calling code; no country (no +)


async def test_a_real_provider_is_sent_only_valid_numbers(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    real = ProviderSettings(
        base_url="http://127.0.0.1:9", api_key=SecretStr("k"), allow_unauthenticated=True
    )
    hub = await sandbox_hub(aiohttp_client, dsn, providers={"carrierx": real})

    # Ofcom's drama range: possible, never allocated (the simulated providers take it).
    answer = await hub.post("/v1/messages", json=to("+447400900001", "+447700900001"))

    assert answer.status == 422
    [detail] = (await answer.json())["error"]["details"]
    assert detail["field"] == "to.1"
    assert detail["error"].startswith("not a valid number")
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


async def test_each_recipient_keeps_its_country(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn)

    sent = await (await hub.post("/v1/messages", json=to("+447700900001", "+15162065574"))).json()
    view = await (await hub.get(f"/v1/messages/{sent['id']}")).json()

    assert {r["to"]: r["country"] for r in view["recipients"]} == {
        "+447700900001": "GB",
        "+15162065574": "US",
    }


async def test_a_country_outside_the_allow_list_is_422(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn, send_allowed_countries=("GB", "IE"))

    answer = await hub.post("/v1/messages", json=to("+447700900001", "+15162065574"))

    assert answer.status == 422
    [detail] = (await answer.json())["error"]["details"]
    assert detail["field"] == "to.1"
    assert "US" in detail["error"]
    assert "SEND_ALLOWED_COUNTRIES" in detail["error"]


async def test_a_tenant_over_its_daily_recipients_is_429_until_midnight(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    hub = await sandbox_hub(aiohttp_client, dsn, api_auth=True, send_daily_recipients=3)
    await create_tenant(db, "other")
    (_, first), (_, second), (_, same_tenant) = (
        await create_key(db, "a", ["send"]),
        await create_key(db, "b", ["send"], "other"),
        await create_key(db, "c", ["send"]),
    )

    def send(key: str, *numbers: str) -> Any:
        return hub.post(
            "/v1/messages", json=to(*numbers), headers={"Authorization": f"Bearer {key}"}
        )

    within = await send(first, "+447700900001", "+447700900002")
    over = await send(first, "+447700900011", "+447700900012")
    last_one = await send(first, "+447700900021")
    other_key = await send(second, "+447700900031", "+447700900032")

    assert within.status == 201
    assert over.status == 429
    error = (await over.json())["error"]
    assert error["code"] == "quota_exceeded"
    assert 1 <= int(over.headers["Retry-After"]) <= 86_400
    assert last_one.status == 201  # what is left of the day's 3 is still usable
    assert other_key.status == 201  # another tenant, another quota
    assert (await send(same_tenant, "+447700900041")).status == 429  # the tenant's keys share
    assert await db.fetchval("SELECT count(*) FROM messages") == 3  # nothing of the refused


@pytest.mark.parametrize(
    ("region", "recipient"),
    [("GB", "+447700900001"), (None, "07700900001")],
)
async def test_a_national_number_in_a_callback_is_read_in_the_providers_region(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection, region: str | None, recipient: str
) -> None:
    carrierx = ProviderSettings(default_region=region, allow_unauthenticated=True)
    hub = await sandbox_hub(aiohttp_client, dsn, providers={"carrierx": carrierx})

    answer = await hub.post(
        "/callbacks/carrierx",
        json={"message_sid": "nat-1", "status": "delivered", "to": "07700900001"},
    )

    assert answer.status == 200
    # Without a region the country is unknown: kept as given, never made `+0...`.
    assert await db.fetchval("SELECT recipient FROM events") == recipient


def test_to_e164_by_the_numbering_plans() -> None:
    assert to_e164("+44 7700 900001") == "+447700900001"
    assert to_e164("0044 7700 900001") == "+447700900001"
    assert to_e164("15162065574") == "+15162065574"  # international, as providers send it
    assert to_e164("07700900001") == "07700900001"  # national: which country is not said
    assert to_e164("07700900001", "GB") == "+447700900001"
    assert to_e164("0412 345 678", "AU") == "+61412345678"
    assert to_e164("MyShop") == "MyShop"


def test_regions_and_countries_are_checked_at_start() -> None:
    with pytest.raises(ValidationError):
        ProviderSettings(default_region="XX")
    with pytest.raises(ValidationError):
        Settings.model_validate({"send_allowed_countries": "GB,UK"})  # UK is not ISO 3166
    assert ProviderSettings(default_region="gb").default_region == "GB"
    assert Settings.model_validate({"send_allowed_countries": "gb, ie"}).send_allowed_countries == (
        "GB",
        "IE",
    )


async def test_the_quota_and_the_rate_are_shared_by_every_instance(
    aiohttp_client: Any, dsn: str, db: asyncpg.Connection
) -> None:
    limits = {"send_daily_recipients": 3, "send_burst": 3, "send_rate_per_s": 0.01}
    one = await sandbox_hub(aiohttp_client, dsn, api_auth=True, **limits)
    other = await sandbox_hub(aiohttp_client, dsn, api_auth=True, **limits)
    _, key = await create_key(db, "a", ["send"])
    auth = {"Authorization": f"Bearer {key}"}

    first = await one.post("/v1/messages", json=to("+447700900001", "+447700900002"), headers=auth)
    second = await other.post(
        "/v1/messages", json=to("+447700900011", "+447700900012"), headers=auth
    )

    assert first.status == 201
    assert second.status == 429  # the other instance knows what the first one took
    assert (await second.json())["error"]["code"] == "quota_exceeded"
    # the rate: a burst of 3 requests for the key, whichever instance is asked
    third = await other.post("/v1/messages", json=to("+447700900021"), headers=auth)
    fourth = await one.post("/v1/messages", json=to("+447700900031"), headers=auth)
    assert third.status == 201
    assert fourth.status == 429
    assert (await fourth.json())["error"]["code"] == "rate_limited"
