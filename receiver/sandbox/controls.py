"""/v1/sandbox/providers (operator keys only, and only in sandbox mode): break a simulated
provider on purpose (down, slow, throttled, lossy; for one country or all) and see what each
one took, so that routing and failover can be watched and tested."""

from __future__ import annotations

from typing import Any, Literal

import phonenumbers
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from receiver.context import AppContext
from receiver.http.bodies import read_model
from receiver.http.errors import NotFound
from receiver.sandbox import apicontrol, carrierx, properties, swift, telecom23
from receiver.sandbox.common import Sandbox, Trouble, TroubleMode, sandbox_of
from receiver.storage.routes import Country


class TroubleIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    mode: TroubleMode
    country: Country | None = Field(default=None, description="ISO 3166 alpha-2; null: every one")
    report_delay_s: float = Field(default=30.0, ge=0, le=3600)
    loss_share: float = Field(default=1.0, gt=0, le=1)
    loss: Literal["undelivered", "silent"] = "undelivered"

    @field_validator("country")
    @classmethod
    def known_country(cls, code: str | None) -> str | None:
        if code is not None and code not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("unknown country code (ISO 3166 alpha-2, upper case, as GB)")
        return code


class SimulatedProvider(BaseModel):
    name: str
    mode: TroubleMode
    country: str | None
    report_delay_s: float
    loss_share: float
    loss: str
    sent: int  # recipients it took since the hub started
    lost: int  # of which a lossy mode made undelivered or silent


class SimulatedProviders(BaseModel):
    data: list[SimulatedProvider]


class InboundIn(BaseModel):
    """A simulated handset writing on its own (STOP, START, HELP, anything)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    handset: str = Field(min_length=8, max_length=16, pattern=r"^\+[0-9]{7,15}$")
    to: str = Field(min_length=1, max_length=32, description="our number or sender id")
    text: str = Field(min_length=1, max_length=640)


class InboundSent(BaseModel):
    provider: str
    status: int  # what the hub answered the simulated provider's callback


class SentCounts(BaseModel):
    """Per simulated provider, the recipients it took, each number with how many times."""

    data: dict[str, dict[str, int]]


def provider_json(sandbox: Sandbox, name: str) -> dict[str, Any]:
    trouble = sandbox.troubles.get(name, Trouble())
    return {
        "name": name,
        "mode": trouble.mode,
        "country": trouble.country,
        "report_delay_s": trouble.report_delay_s,
        "loss_share": trouble.loss_share,
        "loss": trouble.loss,
        "sent": sum(n for (provider, _), n in sandbox.sent.items() if provider == name),
        "lost": sandbox.lost[name],
    }


async def list_all(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    names = sorted(request.app[AppContext.KEY].registry)
    return web.json_response({"data": [provider_json(sandbox, name) for name in names]})


async def sent(request: web.Request) -> web.Response:
    """What each simulated provider took, per number: a number taken twice is a message sent
    twice (what failover must never do by itself)."""
    sandbox = sandbox_of(request)
    counts: dict[str, dict[str, int]] = {name: {} for name in request.app[AppContext.KEY].registry}
    for (provider, number), n in sandbox.sent.items():
        counts.setdefault(provider, {})["+" + number] = n
    return web.json_response({"data": counts})


# Each simulated provider's builder of an inbound message, in its own format.
INBOUND = {
    module.NAME: module.inbound for module in (apicontrol, carrierx, properties, swift, telecom23)
}


async def inbound(request: web.Request) -> web.Response:
    """The simulated provider posts a message from the handset to the hub now, in its own
    inbound format, as if the handset wrote on its own."""
    sandbox = sandbox_of(request)
    name = request.match_info["name"]
    if name not in INBOUND or name not in request.app[AppContext.KEY].registry:
        raise NotFound(f"no simulated provider named {name[:50]!r}")
    incoming = await read_model(request, InboundIn)
    report = INBOUND[name](sandbox, incoming.handset, incoming.to, incoming.text)
    status = await sandbox.deliver(report)
    return web.json_response({"provider": name, "status": status})


async def put(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    name = request.match_info["name"]
    if name not in request.app[AppContext.KEY].registry:
        raise NotFound(f"no simulated provider named {name[:50]!r}")
    incoming = await read_model(request, TroubleIn)
    if incoming.mode == "normal":
        sandbox.troubles.pop(name, None)
    else:
        sandbox.troubles[name] = Trouble(**incoming.model_dump())
    return web.json_response(provider_json(sandbox, name))
