"""What every simulated provider shares: outcomes by number, and the reports it sends back."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
import structlog
from aiohttp import web

from normalizers.base import number_facts, to_e164

log = structlog.get_logger("receiver.sandbox")


class Outcome(Enum):
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    EXPIRED = "expired"
    REJECTED = "rejected at send"
    DUPLICATES = "delivered, reported twice, then a late `sent`"
    PARTS = "delivered, one report per part"
    SILENT = "never reported"
    REPLY = "delivered, then the handset replies"


# The last digit of the recipient's number; 0 and 9 deliver.
BY_LAST_DIGIT: Mapping[str, Outcome] = {
    "1": Outcome.DELIVERED,
    "2": Outcome.UNDELIVERED,
    "3": Outcome.EXPIRED,
    "4": Outcome.REJECTED,
    "5": Outcome.DUPLICATES,
    "6": Outcome.PARTS,
    "7": Outcome.SILENT,
    "8": Outcome.REPLY,
}

REPLY_TEXT = "YES"
# A message whose text starts with this has its handset (a number ending in 8) reply with the
# rest (`REPLY:STOP`), so that keyword replies can be driven end to end in every format.
REPLY_PREFIX = "REPLY:"


def reply_text(sent: object) -> str:
    if isinstance(sent, str) and sent.startswith(REPLY_PREFIX):
        return sent.removeprefix(REPLY_PREFIX).strip()[:160] or REPLY_TEXT
    return REPLY_TEXT


# A message whose text starts with this asks the simulated provider for one of its documented
# error answers by name (`ERROR:INSUFFICIENT_BALANCE`), so that each can be driven end to end.
ERROR_PREFIX = "ERROR:"


# `ERROR:RATE_LIMITED`: the first such request is answered 429 with `Retry-After: 1`, as any
# provider may throttle; the same request again is accepted.
RATE_LIMITED = "RATE_LIMITED"


def requested_error(text: object) -> str | None:
    if isinstance(text, str) and text.startswith(ERROR_PREFIX):
        return text.removeprefix(ERROR_PREFIX).split()[0] if text[len(ERROR_PREFIX) :] else ""
    return None


def seconds_until(moment: object) -> float:
    """How long until a send time the provider was given (RFC 3339, or seconds since the
    epoch): 0 when it is unreadable or past."""
    if isinstance(moment, int | float) and not isinstance(moment, bool):
        target = datetime.fromtimestamp(moment, UTC)
    elif isinstance(moment, str):
        try:
            target = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return 0.0
        if target.tzinfo is None:
            target = target.replace(tzinfo=UTC)
    else:
        return 0.0
    return max(0.0, (target - datetime.now(UTC)).total_seconds())


def outcome_of(number: str) -> Outcome:
    return BY_LAST_DIGIT.get(number.strip()[-1:], Outcome.DELIVERED)


def final_reports(outcome: Outcome) -> list[tuple[str, int]]:
    """The reports after acceptance, in the order they are sent, each with when it happened
    (seconds after the send): `sent`, then the final one. DUPLICATES sends its `delivered` twice,
    identical, then a `sent` that happened before it; SILENT and REJECTED send nothing."""
    if outcome in (Outcome.SILENT, Outcome.REJECTED):
        return []
    if outcome is Outcome.DUPLICATES:
        return [("delivered", 2), ("delivered", 2), ("sent", 1)]
    final = {Outcome.UNDELIVERED: "undelivered", Outcome.EXPIRED: "expired"}.get(
        outcome, "delivered"
    )
    return [("sent", 1), (final, 2)]


TroubleMode = Literal["normal", "down", "slow", "throttled", "lossy"]


@dataclass(frozen=True)
class Trouble:
    """How an operator broke a simulated provider (for one destination country, or all):
    `down` answers every send 503; `throttled` answers 429 (Retry-After: 1); `slow` sends its
    reports `report_delay_s` later; `lossy` makes `loss_share` of the recipients it accepts
    `undelivered` (or never reported: `silent`), every n-th exactly, no randomness."""

    mode: TroubleMode = "normal"
    country: str | None = None
    report_delay_s: float = 30.0
    loss_share: float = 1.0
    loss: Literal["undelivered", "silent"] = "undelivered"

    def applies(self, numbers: Sequence[str]) -> bool:
        return self.country is None or any(country_of(n) == self.country for n in numbers)


def country_of(number: str) -> str | None:
    e164 = to_e164(number if number.startswith("+") else "+" + number)
    return number_facts(e164)[2] if e164 else None


@dataclass
class Sandbox:
    """The simulated providers' shared state: where to call back, how long to wait, and the
    reports still to send (ended on shutdown)."""

    callback_urls: Mapping[str, str]
    delay_s: float
    signing_secrets: Mapping[str, str] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    counter: int = 0
    epoch: int = field(default_factory=lambda: int(time.time()))
    attempts: dict[str, int] = field(default_factory=dict)
    troubles: dict[str, Trouble] = field(default_factory=dict)
    # Recipients each simulated provider took (provider, number): what it would bill.
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)

    def refusal(self, provider: str, numbers: Sequence[str]) -> web.Response | None:
        """The answer of a provider that is down or throttled for these numbers, if it is."""
        trouble = self.troubles.get(provider)
        if trouble is None or not trouble.applies(numbers):
            return None
        if trouble.mode == "down":
            return web.json_response({"error": "service unavailable (sandbox: down)"}, status=503)
        if trouble.mode == "throttled":
            return web.json_response(
                {"error": "too many requests (sandbox: throttled)"},
                status=429,
                headers=THROTTLED_HEADERS,
            )
        return None

    def outcome_of(self, provider: str, number: str) -> Outcome:
        """What happens to a recipient the provider took (counted as sent), a lossy
        provider's losses included."""
        outcome = outcome_of(number)
        if outcome is Outcome.REJECTED:
            return outcome
        self.sent[(provider, number.lstrip("+"))] += 1
        trouble = self.troubles.get(provider)
        if trouble is not None and trouble.mode == "lossy" and trouble.applies([number]):
            seen = self.lost[provider + ":seen"]
            self.lost[provider + ":seen"] += 1
            if int((seen + 1) * trouble.loss_share) > int(seen * trouble.loss_share):
                self.lost[provider] += 1
                return Outcome.UNDELIVERED if trouble.loss == "undelivered" else Outcome.SILENT
        return outcome

    def report_delay_s(self, provider: str, numbers: Sequence[str]) -> float:
        trouble = self.troubles.get(provider)
        if trouble is not None and trouble.mode == "slow" and trouble.applies(numbers):
            return trouble.report_delay_s
        return 0.0

    def next_id(self, prefix: str) -> str:
        """Unique across restarts too, as a real provider's ids are: the hub's database
        outlives the sandbox."""
        self.counter += 1
        return f"{prefix}{self.epoch}{self.counter:06d}"

    def next_number(self) -> int:
        self.counter += 1
        return self.epoch * 1_000_000 + self.counter

    def later(self, steps: Sequence[tuple[int, Any]], start_after_s: float = 0.0) -> None:
        """Send (step number, request) pairs, step n after n delays, the first after
        `start_after_s` more (a message scheduled for later)."""
        task = asyncio.get_running_loop().create_task(self._run(steps, start_after_s))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, steps: Sequence[tuple[int, Any]], start_after_s: float) -> None:
        await asyncio.sleep(start_after_s)
        done = 0
        for step, report in sorted(steps, key=lambda pair: pair[0]):
            await asyncio.sleep(max(0, step - done) * self.delay_s)
            done = step
            await self.deliver(report)

    async def deliver(self, report: Report) -> int:
        """Posts one report to the hub; its answer's status (0 when it did not answer)."""
        if self.session is None:
            self.session = aiohttp.ClientSession()
        try:
            async with self.session.request(
                report.method,
                report.url,
                data=report.body,
                headers=dict(report.headers),
                timeout=aiohttp.ClientTimeout(total=10),
            ) as answer:
                log.info("sandbox_report", url=report.url, status=answer.status)
                return answer.status
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("sandbox_report_failed", url=report.url, error=repr(error))
            return 0

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()


@dataclass(frozen=True)
class Report:
    method: str
    url: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json_post(cls, url: str, payload: object, **headers: str) -> Report:
        return cls(
            "POST",
            url,
            json.dumps(payload).encode(),
            {"Content-Type": "application/json", **headers},
        )

    @classmethod
    def form(cls, url: str, fields: Mapping[str, str], method: str = "POST") -> Report:
        if method == "GET":
            separator = "&" if "?" in url else "?"
            return cls("GET", url + separator + urlencode(fields))
        return cls(
            "POST",
            url,
            urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )


def throttled_once(sandbox: Sandbox, provider: str, text: object, body: object) -> bool:
    """Whether this request asked to be throttled (`ERROR:RATE_LIMITED`) and is the first of
    its kind: it is then answered 429."""
    if requested_error(text) != RATE_LIMITED:
        return False
    material = json.dumps(body, sort_keys=True, default=str).encode()
    key = f"{provider}:throttled:{hashlib.sha256(material).hexdigest()}"
    tries = sandbox.attempts[key] = sandbox.attempts.get(key, 0) + 1
    return tries == 1


THROTTLED_HEADERS = {"Retry-After": "1"}


SANDBOX_KEY = web.AppKey("sandbox", Sandbox)


def sandbox_of(request: web.Request) -> Sandbox:
    return request.config_dict[SANDBOX_KEY]


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
