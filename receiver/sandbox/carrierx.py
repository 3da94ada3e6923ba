"""Simulated CarrierX: POST /core/v2/sms/messages, then the SMS object at every status change
and for every reply, to the account's `sms` callback URL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from normalizers.encoding import segment
from receiver.sandbox.common import (
    THROTTLED_HEADERS,
    Outcome,
    Report,
    Sandbox,
    final_reports,
    json_body,
    reply_text,
    requested_error,
    sandbox_of,
    throttled_once,
)

NAME = "carrierx"

# CarrierX does not document its error bodies: a `message` with the HTTP status, by status.
ERRORS = {
    "400": "from must be a rented DID with SMS enabled",
    "401": "invalid token",
    "403": "the token lacks the sms.create scope",
    "500": "internal error",
}


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/{NAME}/core/v2/sms/messages", send)


def _stamp(offset_s: float = 0) -> str:
    """Provider time, to the second (so that a report sent twice is the same report)."""
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=offset_s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def send(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return web.json_response({"message": "authorization required"}, status=401)
    body = await json_body(request)
    if not isinstance(body, dict):
        return web.json_response({"message": "body must be a JSON object"}, status=400)
    to = str(body.get("to") or body.get("to_did") or "")
    sender = str(body.get("from") or body.get("from_did") or "")
    text = body.get("message")
    if not to or not sender or (not text and not body.get("media_urls")):
        return web.json_response({"message": "from, to and message are required"}, status=400)
    trouble = sandbox.refusal(NAME, [to])
    if trouble is not None:
        return trouble
    if throttled_once(sandbox, NAME, text, body):
        return web.json_response(
            {"message": "too many requests"}, status=429, headers=THROTTLED_HEADERS
        )
    requested = requested_error(text)
    if requested in ERRORS:
        return web.json_response({"message": ERRORS[requested]}, status=int(requested))
    outcome = sandbox.outcome_of(NAME, to)
    if outcome is Outcome.REJECTED:
        return web.json_response({"message": f"destination {to} is not reachable"}, status=400)
    is_mms = (
        bool(body.get("media_urls") or body.get("group_recipients")) or body.get("type") == "mms"
    )
    sms: dict[str, Any] = {
        "date_changed": _stamp(),
        "date_created": _stamp(),
        "date_status_changed": None,
        "direction": "outbound",
        "from": sender,
        "group_recipients": body.get("group_recipients") or [],
        "mcc": None,
        "media_urls": body.get("media_urls") or [],
        "message": text,
        "message_segments": 1 if is_mms else segment(str(text or "")).segments,
        "message_sid": sandbox.next_id("cx-"),
        "mnc": None,
        "partner_sid": "sandbox-partner",
        "price": None,
        "status": "queued",
        "to": to,
        "type": "mms" if is_mms else "sms",
        "user_data": body.get("user_data"),
    }
    url = sandbox.callback_urls[NAME]
    steps = []
    for step, (word, offset) in enumerate(final_reports(outcome), start=1):
        stamp = _stamp(offset)
        final = word != "sent"
        steps.append(
            (
                step,
                Report.json_post(
                    url,
                    sms
                    | {
                        "status": word,
                        "date_status_changed": stamp,
                        "date_changed": stamp,
                        "price": "0.0025" if final else None,
                    },
                ),
            )
        )
    if outcome is Outcome.REPLY:
        steps.append(
            (
                3,
                Report.json_post(
                    url,
                    sms
                    | {
                        "direction": "inbound",
                        "status": "received",
                        "message_sid": sandbox.next_id("cx-"),
                        "from": to,
                        "to": sender,
                        "message": reply_text(text),
                        "date_created": _stamp(3),
                        "date_status_changed": _stamp(3),
                        "user_data": None,
                    },
                ),
            )
        )
    sandbox.later(steps, start_after_s=sandbox.report_delay_s(NAME, [to]))
    return web.json_response(sms)


def inbound(sandbox: Sandbox, handset: str, ours: str, text: str) -> Report:
    """A handset writing on its own: CarrierX's SMS object, inbound."""
    return Report.json_post(
        sandbox.callback_urls[NAME],
        {
            "date_changed": _stamp(),
            "date_created": _stamp(),
            "date_status_changed": _stamp(),
            "direction": "inbound",
            "from": handset,
            "group_recipients": [],
            "media_urls": [],
            "message": text,
            "message_segments": 1,
            "message_sid": sandbox.next_id("cx-"),
            "partner_sid": "sandbox-partner",
            "price": None,
            "status": "received",
            "to": ours,
            "type": "sms",
            "user_data": None,
        },
    )
