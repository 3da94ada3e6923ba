"""The answer to a HELP or INFO reply: the tenant's help_reply text, sent back to the handset
from the number it wrote to, through the provider the reply came from, as a message like any
other (its events, its timeline). Taken from help_replies in the scheduler's loop: an answer is
sent at most once (a crash between taking and sending loses it rather than send it twice)."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from receiver.context import AppContext
from receiver.http.errors import ReceiverError
from receiver.routing.choice import RouteTable
from receiver.sending.route import Quota, SendMessageIn, send_for_tenant
from receiver.storage import optouts, tenants

log = structlog.get_logger("receiver.sending.help_replies")

BATCH = 20


class HelpReplies:
    def __init__(self, context: AppContext, table: RouteTable) -> None:
        self.context = context
        self.table = table

    async def tick(self) -> int:
        async with self.context.db.connection() as connection, connection.transaction():
            rows = await optouts.claim_help_replies(connection, BATCH)
        await asyncio.gather(*(self._answer(row) for row in rows))
        return len(rows)

    async def _answer(self, row: asyncpg.Record) -> None:
        context = self.context
        if (
            not row["enabled"]
            or row["help_reply"] is None
            or row["provider"] not in context.registry
        ):
            return
        with structlog.contextvars.bound_contextvars(reply_event_id=row["reply_event_id"]):
            try:
                async with context.db.connection() as connection:
                    tenant = await tenants.tenant(connection, row["tenant"])
                if tenant is None:
                    return
                incoming = SendMessageIn.model_validate(
                    {
                        "provider": row["provider"],
                        "to": [row["handset"]],
                        "from": row["ours"],
                        "body": row["help_reply"],
                        "ref": f"help:{row['reply_event_id']}"[:255],
                    }
                )
                quota = Quota(context, f"tenant {tenant.name}", 0)  # an answer, not a campaign
                status, answer = await send_for_tenant(context, incoming, tenant, quota, self.table)
                log.info("help_reply_sent", status=status, message_id=answer.get("id"))
            except (ReceiverError, ValueError) as error:
                log.warning("help_reply_not_sent", error=repr(error))
            except Exception:
                log.exception("help_reply_not_sent")
