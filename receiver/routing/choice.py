"""Choosing providers for a message that names none: the first route whose match takes the
recipient decides the order in which its providers are tried (`priority`, `weighted`,
`cheapest`), healthy providers first. The routes are read from Postgres and kept per instance,
reloaded within ROUTES_REFRESH_S of a change made anywhere."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from normalizers.base import number_facts
from receiver.config import Settings
from receiver.routing.health import SEND_ERRORS, Breakers, State, change
from receiver.storage import provider_health, routes
from receiver.storage.messages import Redelivery
from receiver.storage.pool import Database
from receiver.storage.routes import RouteSpec, SendRoute

# How often an instance looks for route changes (one indexed max() at most this often).
ROUTES_REFRESH_S = 2.0


@dataclass(frozen=True, slots=True)
class Recipient:
    """What a route may match a recipient on."""

    number: str
    country: str | None
    tenant: str
    sender: str | None
    kind: str  # "sms" or "mms"


@dataclass(frozen=True, slots=True)
class Decision:
    """The providers a recipient is tried over, in order, and why; the route's failover
    policy goes with it."""

    route: str | None  # None: the caller named the provider (or DEFAULT_PROVIDER was used)
    choose: str
    providers: tuple[str, ...]
    why: str
    failover_on_timeout: bool = False
    redeliver: Mapping[str, Any] | None = None

    def as_json(self, recipients: Sequence[str]) -> dict[str, Any]:
        return {
            "route": self.route,
            "choose": self.choose,
            "providers": list(self.providers),
            "why": self.why,
            "failover_on_timeout": self.failover_on_timeout,
            "redeliver": dict(self.redeliver) if self.redeliver is not None else None,
            "to": list(recipients),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            route=data.get("route"),
            choose=data.get("choose", "priority"),
            providers=tuple(data["providers"]),
            why=data.get("why", ""),
            failover_on_timeout=bool(data.get("failover_on_timeout")),
            redeliver=data.get("redeliver"),
        )


def redelivery(decision: Decision, now: datetime) -> Redelivery | None:
    """An attempt's redelivery after the fact, as its route asks (None: it does not)."""
    policy = decision.redeliver
    if not policy:
        return None
    return Redelivery(now + timedelta(seconds=policy["within_s"]), tuple(policy["on"]))


def matches(spec: RouteSpec, recipient: Recipient) -> bool:
    match = spec.match
    number = recipient.number
    return (
        spec.enabled
        and (match.tenant is None or recipient.tenant in match.tenant)
        and (match.country is None or recipient.country in match.country)
        and (match.prefix is None or any(number.startswith(p) for p in match.prefix))
        and (match.sender is None or recipient.sender in match.sender)
        and (match.kind is None or recipient.kind in match.kind)
    )


# Whether a provider is healthy for a country: (provider, country) -> a reason when it is not.
Health = Callable[[str, str | None], str | None]


@dataclass
class WeightedTurns:
    """Smooth weighted round robin (as nginx's upstreams): over any run of sends the first
    choices follow the weights exactly (70/30 gives 7 and 3 in every 10), with no randomness
    to make a test or an operator guess."""

    current: dict[tuple[str, tuple[str, ...]], dict[str, int]] = field(default_factory=dict)

    def pick(self, route: str, providers: Sequence[str], weights: Mapping[str, int]) -> str:
        state = self.current.setdefault((route, tuple(providers)), {})
        total = 0
        for name in providers:
            state[name] = state.get(name, 0) + weights[name]
            total += weights[name]
        chosen = max(providers, key=lambda name: state[name])
        state[chosen] -= total
        return chosen


def decide(
    route: SendRoute,
    recipient: Recipient,
    allowed: Callable[[str], bool],
    health: Health,
    turns: WeightedTurns,
) -> Decision:
    """The order in which this route tries its providers for the recipient: those the tenant
    may use, the healthy ones first by the route's rule, then the degraded ones (so that when
    every provider is degraded, the rule's order stands)."""
    spec = route.spec
    usable = [name for name in spec.providers if allowed(name)]
    degraded = {name: reason for name in usable if (reason := health(name, recipient.country))}
    healthy = [name for name in usable if name not in degraded]
    if not healthy:
        healthy, degraded = usable, {}
    reason = ""
    if spec.choose == "weighted" and len(healthy) > 1:
        first = turns.pick(route.name, healthy, {n: spec.weight(n) for n in healthy})
        order = [first, *(n for n in healthy if n != first)]
        shares = "/".join(str(spec.weight(n)) for n in healthy)
        reason = f"weighted {shares} over {', '.join(healthy)}: {first} this time"
    elif spec.choose == "cheapest":
        infinite = float("inf")

        def cost(name: str) -> float:
            price = spec.price(name, recipient.country)
            return price if price is not None else infinite

        order = sorted(healthy, key=cost)
        price = spec.price(order[0], recipient.country)
        reason = f"cheapest for {recipient.country or 'this number'}: {order[0]}" + (
            f" at {price:g}" if price is not None else " (no price given for any)"
        )
    else:
        order = list(healthy)
        reason = f"priority: {order[0]} first"
    if degraded:
        reason += "; " + "; ".join(f"{name} degraded ({why})" for name, why in degraded.items())
    order += list(degraded)
    return Decision(
        route=route.name,
        choose=spec.choose,
        providers=tuple(order),
        why=f"route {route.name}: {reason}",
        failover_on_timeout=spec.failover_on_timeout,
        redeliver=spec.redeliver.model_dump() if spec.redeliver is not None else None,
    )


def first_match(table: Sequence[SendRoute], recipient: Recipient) -> SendRoute | None:
    return next((route for route in table if matches(route.spec, recipient)), None)


ROUTE_TABLE: web.AppKey[RouteTable]


class RouteTable:
    """This instance's copy of the routes and of the providers' health: reloaded when the
    routes' version moved (the health every time), looked at no more often than every
    ROUTES_REFRESH_S; and this instance's circuit breakers, fed by every provider call."""

    def __init__(self, settings: Settings, refresh_s: float = ROUTES_REFRESH_S) -> None:
        self.settings = settings
        self.refresh_s = refresh_s
        self.routes: list[SendRoute] = []
        self.version = -1
        self.checked_at = float("-inf")
        self.turns = WeightedTurns()
        self.states: dict[tuple[str, str], State] = {}
        self.breakers = Breakers()
        self.wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # a test's own time
        self._lock = asyncio.Lock()

    def changed(self) -> None:
        """This instance changed the routes: it looks again at its next send."""
        self.checked_at = float("-inf")

    async def current(self, db: Database) -> list[SendRoute]:
        if time.monotonic() - self.checked_at < self.refresh_s:
            return self.routes
        async with self._lock:
            if time.monotonic() - self.checked_at >= self.refresh_s:
                async with db.connection() as connection:
                    version = await routes.routes_version(connection)
                    if version != self.version:
                        rows = await routes.list_routes(connection)
                        self.routes = [routes.route_of(row) for row in rows]
                        self.version = version
                    self.states = {
                        (row["provider"], row["country"]): State(
                            row["state"], row["rule"], row["reason"], row["changed_at"]
                        )
                        for row in await provider_health.states(connection)
                    }
                self.checked_at = time.monotonic()
        return self.routes

    def health(self, provider: str, country: str | None) -> str | None:
        """Why the provider is degraded for the country (None: it is healthy, or an open
        circuit lets this send through as its probe)."""
        for key in ((provider, country or ""), (provider, "")):
            state = self.states.get(key)
            if state is None or state.state != "degraded":
                continue
            if state.rule == SEND_ERRORS:
                probe_s = self.settings.health_probe_s
                waited = (self.wall_clock() - state.changed_at).total_seconds()
                if waited >= probe_s and self.breakers.may_probe(key, probe_s):
                    return None
            return state.reason
        return None

    async def observed(
        self, db: Database, provider: str, numbers: Sequence[str], error: str | None
    ) -> bool:
        """A call to the provider went through (`error` None) or failed for a reason about
        the provider: the circuit breaker counts it, opens or closes. Returns whether the
        provider's health changed (an event was stored)."""
        if error is None and not self.breakers.errors and not self._open_circuits():
            return False  # the common case, without a look at the numbers
        countries = {number_facts(number)[2] or "" for number in numbers}
        key = (provider, countries.pop() if len(countries) == 1 else "")
        state = self.states.get(key)
        if error is None:
            self.breakers.succeeded(key)
            if state is None or state.state != "degraded" or state.rule != SEND_ERRORS:
                return False
            reason = "a probe went through: the circuit is closed"
            await self._change(db, key, "healthy", "recovered", reason)
            return True
        errors = self.breakers.failed(key)
        if errors < self.settings.health_send_errors or (state and state.state == "degraded"):
            return False
        reason = f"{errors} send errors in a row, the last: {error}"
        await self._change(db, key, "degraded", SEND_ERRORS, reason)
        return True

    def _open_circuits(self) -> bool:
        return any(s.state == "degraded" and s.rule == SEND_ERRORS for s in self.states.values())

    async def _change(
        self, db: Database, key: tuple[str, str], state: str, rule: str, reason: str
    ) -> None:
        async with db.connection() as connection, connection.transaction():
            await change(connection, key[0], key[1], state, rule, reason)
        self.states[key] = State(state, rule, reason, datetime.now(UTC))


ROUTE_TABLE = web.AppKey("route_table", RouteTable)
