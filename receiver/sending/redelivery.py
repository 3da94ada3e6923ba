"""Failover after the fact (a route's `redeliver`): a recipient whose latest attempt ends in
one of the route's statuses with a temporary failure (or the hub's own expiry), within the
window, is sent again over the route's next provider it has not been sent over, up to
`max_attempts`; never one that any attempt delivered. Claimed under a lock, the new attempt
recorded in the same transaction: two instances never send one recipient again twice. Runs
in the scheduler's loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import asyncpg
import structlog

from normalizers.base import SendRequest
from receiver.context import AppContext
from receiver.routing.choice import Decision, RouteTable, redelivery
from receiver.sending import silence
from receiver.sending.route import (
    SendMessageIn,
    SendPlan,
    SendProgress,
    deliver,
    provider_options,
)
from receiver.storage import messages
from receiver.storage.redelivery import claim_ended, close_window

log = structlog.get_logger("receiver.sending.redelivery")

# Recipients looked at in one claim; a full batch is followed at once by another.
BATCH = 100


def next_provider(row: asyncpg.Record, decision: Decision) -> str | None:
    """The route's next provider for this ended attempt, if it is to be sent again."""
    policy = decision.redeliver
    if not policy or row["superseded"] or row["delivered_once"] or not row["final"]:
        return None
    if row["updated_at"] > row["redeliver_until"] or row["status"] not in (
        row["redeliver_on"] or ()
    ):
        return None
    temporary = row["failure_kind"] == "temporary" or (
        row["status"] == "expired" and row["synthetic_final"]
    )
    if not temporary or row["attempt"] >= policy["max_attempts"]:
        return None
    return next((name for name in decision.providers if name not in row["tried"]), None)


def decision_of(row: asyncpg.Record) -> Decision | None:
    for group in json.loads(row["routing"]) if row["routing"] else ():
        if row["recipient"] in group["to"]:
            return Decision.from_json(group)
    return None


class Redeliveries:
    """Run by the scheduler's loop, at its pace (SCHEDULE_POLL_S)."""

    def __init__(self, context: AppContext, table: RouteTable | None = None) -> None:
        self.context = context
        self.table = table

    async def tick(self) -> int:
        """Claims what has ended, records the new attempts, then sends them; returns how many
        recipients were looked at."""
        context = self.context
        now = datetime.now(UTC)
        chosen: list[tuple[asyncpg.Record, Decision, str]] = []
        async with context.db.connection() as connection, connection.transaction():
            rows = await claim_ended(connection, BATCH)
            closed: list[int] = []
            for row in rows:
                decision = decision_of(row)
                name = next_provider(row, decision) if decision is not None else None
                if decision is None or name is None or name not in context.registry:
                    closed.append(row["id"])
                    continue
                send = _send_of(row, "")
                moved = await messages.fail_over(
                    connection,
                    row["message_id"],
                    [row["recipient"]],
                    name,
                    silence.deadline(context.settings, name, send),
                    redelivery(decision, now),
                )
                if moved:
                    chosen.append((row, decision, name))
                else:
                    closed.append(row["id"])
            await close_window(connection, closed)
        for row, _decision, name in chosen:
            log.info(
                "redelivery",
                message_id=str(row["message_id"]),
                provider=name,
                after=row["provider"],
                status=row["status"],
                attempt=row["attempt"] + 1,
            )
        await asyncio.gather(
            *(self._send(row, decision, name, now) for row, decision, name in chosen)
        )
        return len(rows)

    async def _send(
        self, row: asyncpg.Record, decision: Decision, name: str, now: datetime
    ) -> None:
        """The new attempt's send: over `name`, then on down the route should it refuse."""
        context = self.context
        message_id: uuid.UUID = row["message_id"]
        onward = decision.providers[decision.providers.index(name) :]
        plan_decision = Decision(
            route=decision.route,
            choose=decision.choose,
            providers=tuple(p for p in onward if p == name or p not in row["tried"]),
            why=decision.why,
            failover_on_timeout=decision.failover_on_timeout,
            redeliver=decision.redeliver,
        )
        with structlog.contextvars.bound_contextvars(message_id=str(message_id)):
            try:
                incoming = SendMessageIn.model_validate(json.loads(row["request"]))
                send = _send_of(row, str(message_id))
                options = provider_options(context, plan_decision.providers, incoming, send, now)
                plan = SendPlan({row["recipient"]: plan_decision}, options, self.table)
                await deliver(context, send, message_id, plan, SendProgress(), counts=False)
            except Exception:
                # The new attempt is recorded: with no answer it ends at its deadline.
                log.exception("redelivery_not_sent", provider=name)


def _send_of(row: asyncpg.Record, message_id: str) -> SendRequest:
    incoming = json.loads(row["request"])
    return SendRequest(
        to=[row["recipient"]],
        sender=incoming.get("from"),
        body=incoming.get("body", ""),
        message_id=message_id,
        client_ref=incoming.get("ref"),
        callback_url="",
    )
