"""Sends the hub holds: a message with a future send_at for a provider that cannot schedule
(23 Telecom, Swift, CarrierX), or a routed one, is stored with its recipients `scheduled` and
sent here at its time, at most SCHEDULE_POLL_S late. Claimed with FOR UPDATE SKIP LOCKED and
marked before the provider is called, so several instances share the work and none sends a
message twice (a worker killed between the two leaves it unsent; its recipients expire at their
deadline). Runs in `worker`, and in `serve` with its dispatcher; redeliveries after the fact
run in the same loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import UTC, datetime

import asyncpg
import structlog
from aiohttp import web
from pydantic import ValidationError

from normalizers.base import OptionsError, SendRequest
from normalizers.events import Status
from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import asker_of
from receiver.http.errors import NotFound, ReceiverError
from receiver.periodic import repeat
from receiver.routing.choice import Decision, RouteTable
from receiver.sending import help_replies, redelivery
from receiver.sending.help_replies import HelpReplies
from receiver.sending.hub_events import end_recipients
from receiver.sending.providers import account_of
from receiver.sending.redelivery import Redeliveries
from receiver.sending.route import (
    SendMessageIn,
    SendPlan,
    SendProgress,
    answered_recipient,
    deliver,
    provider_options,
)
from receiver.storage import messages

log = structlog.get_logger("receiver.sending.scheduler")

# Messages taken at one claim, and sent at once at most.
BATCH = 20


class Scheduler:
    def __init__(self, context: AppContext, table: RouteTable | None = None) -> None:
        self.context = context
        self.table = table or RouteTable(context.settings)
        self.stopping = asyncio.Event()
        self.redeliveries = Redeliveries(context, self.table)
        self.help_replies = HelpReplies(context, self.table)

    async def run(self) -> None:
        """Sends what is due every SCHEDULE_POLL_S (at once again after a full batch) until
        stopped."""

        async def step() -> bool:
            held = await self.tick()
            ended = await self.redeliveries.tick()
            answered = await self.tick_answers()
            return held >= BATCH or ended >= redelivery.BATCH or answered >= help_replies.BATCH

        await repeat(log, "scheduler", step, self.context.settings.schedule_poll_s, self.stopping)

    async def stop(self) -> None:
        self.stopping.set()

    async def tick_answers(self) -> int:
        """Answers the HELP replies waiting; returns how many were taken."""
        return await self.help_replies.tick()

    async def tick(self) -> int:
        """Claims the due messages and sends them; returns how many were claimed."""
        async with self.context.db.connection() as connection:
            rows = await messages.claim_due(connection, BATCH)
        await asyncio.gather(*(self._send(row) for row in rows))
        return len(rows)

    async def _send(self, row: asyncpg.Record) -> None:
        message_id: uuid.UUID = row["id"]
        context = self.context
        with structlog.contextvars.bound_contextvars(message_id=str(message_id)):
            now = datetime.now(UTC)
            if row["expires_at"] is not None and row["expires_at"] <= now:
                await self._end(message_id, Status.EXPIRED, "expired_before_sending", now)
                return
            try:
                incoming = SendMessageIn.model_validate(json.loads(row["request"]))
                plan = dataclasses.replace(
                    held_plan(context, row, incoming, now), observer=self.table
                )
            except (OptionsError, ValidationError, ReceiverError) as error:
                # What was valid when held is not now (the configuration changed): not sent.
                log.error("held_send_not_possible", error=repr(error))
                await self._end(message_id, Status.FAILED, "not_sendable", now, repr(error))
                return
            send = SendRequest(
                to=incoming.to,
                sender=incoming.sender,
                body=incoming.body,
                message_id=str(message_id),
                client_ref=incoming.ref,
                callback_url="",  # each provider's own, when it is called
                expires_at=incoming.expires_at,  # send_at: now, the hub's
            )
            status, _answer = await deliver(context, send, message_id, plan, SendProgress())
            log.info("held_send_sent", status=status)

    async def _end(
        self,
        message_id: uuid.UUID,
        status: Status,
        word: str,
        now: datetime,
        detail: str | None = None,
    ) -> None:
        """Ends every recipient of a held message that will not be sent, with the hub's own
        event (synthetic), stored and re-emitted like a report."""
        async with self.context.db.connection() as connection, connection.transaction():
            recipients = await messages.pending_recipients(connection, message_id)
            await end_recipients(connection, recipients, status, word, now, detail)
        self.context.signal.new_events()
        log.info("held_send_ended", status=str(status), recipients=len(recipients))


def held_plan(
    context: AppContext, row: asyncpg.Record, incoming: SendMessageIn, now: datetime
) -> SendPlan:
    """The providers of a held message as chosen when it was accepted (its route's order, or
    the one the caller named), each still configured and taking its options."""
    if row["routing"]:
        decisions = {
            number: Decision.from_json(group)
            for group in json.loads(row["routing"])
            for number in group["to"]
        }
    else:
        named = Decision(route=None, choose="named", providers=(row["provider"],), why="")
        decisions = dict.fromkeys(incoming.to, named)
    names = list(dict.fromkeys(p for d in decisions.values() for p in d.providers))
    for name in names:
        provider = context.registry.get(name)
        if provider is None:
            raise OptionsError([{"field": "provider", "error": f"{name} no longer configured"}])
        account_of(context.settings, name)
    probe = SendRequest(
        to=incoming.to,
        sender=incoming.sender,
        body=incoming.body,
        message_id="",
        client_ref=incoming.ref,
        callback_url="",
        expires_at=incoming.expires_at,
    )
    return SendPlan(decisions, provider_options(context, names, incoming, probe, now))


class NotCancellable(ReceiverError):
    status = 409
    code = "not_cancellable"


async def cancel_message(request: web.Request) -> web.Response:
    """DELETE /v1/messages/{id} and POST /v1/messages/{id}/cancel: a message the hub holds
    (a future send_at its provider cannot schedule) is taken out of the schedule and its
    recipients become `cancelled`. One sent, being sent, or scheduled by its provider cannot
    be (409)."""
    context: AppContext = request.app[AppContext.KEY]
    asker = asker_of(request)
    message_id = params.uuid_or_none(request.match_info["id"])
    if message_id is None:
        raise NotFound("no such message")
    now = datetime.now(UTC)
    async with context.db.connection() as connection, connection.transaction():
        cancelled = await messages.cancel_scheduled(connection, message_id, asker)
        if cancelled:
            recipients = await messages.pending_recipients(connection, message_id)
            await end_recipients(connection, recipients, Status.CANCELLED, "cancelled", now)
        exists = cancelled or await messages.message(connection, message_id, asker) is not None
    if not exists:
        raise NotFound("no such message")
    if not cancelled:
        raise NotCancellable(
            "only a message the hub holds until its send_at can be cancelled: this one was"
            " sent, is being sent, was cancelled already, or is scheduled by its provider"
        )
    context.signal.new_events()
    async with context.db.connection() as connection:
        rows = await messages.recipients_as_answered(connection, message_id)
    log.info("held_send_cancelled", message_id=str(message_id), recipients=len(rows))
    return web.json_response(
        {
            "id": str(message_id),
            "cancelled": True,
            "recipients": [
                answered_recipient(latest, attempts)
                for latest, attempts in messages.by_recipient(rows)
            ],
        }
    )
