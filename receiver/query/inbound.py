"""GET /v1/inbound: replies from handsets, newest first, each with the message it most likely
answers."""

from __future__ import annotations

from aiohttp import web

from receiver.context import AppContext
from receiver.http import params
from receiver.http.apikeys import asker_of
from receiver.storage import events
from receiver.storage.events import event_json


async def inbound(request: web.Request) -> web.Response:
    context = request.app[AppContext.KEY]
    asker = asker_of(request)
    limit = params.limit(request)
    after = params.parse_keyset_cursor(request, params.TEXT_KEY)
    handset = params.number(request, "from")
    ours = params.number(request, "to")
    provider = params.choice(request, "provider", context.registry.keys())
    since, until = params.moment(request, "since"), params.moment(request, "until")
    async with context.read_db.connection() as connection:
        rows = await events.inbound(
            connection,
            provider=provider,
            handset=handset,
            ours=ours,
            since=since,
            until=until,
            after=after,
            limit=limit + 1,
            asker=asker,
        )
    page = rows[:limit]
    return web.json_response(
        {
            "data": [
                event_json(row)
                | {"in_reply_to": str(row["in_reply_to"]) if row["in_reply_to"] else None}
                for row in page
            ],
            "next_cursor": (
                params.keyset_cursor(page[-1]["stored_at"], page[-1]["id"])
                if len(rows) > limit
                else None
            ),
        }
    )
