"""Simulated Fone Dynamics: POST /v2/Properties/{PropertySid}/Messages (Basic auth, one
recipient), then the delivery receipt to DeliveryReceiptWebhookUri by its method (GET query or
POST form), and replies to WebhookUri (leased sender) by WebhookMethod."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from receiver.sandbox.common import (
    THROTTLED_HEADERS,
    Outcome,
    Report,
    Sandbox,
    json_body,
    reply_text,
    requested_error,
    sandbox_of,
    seconds_until,
    throttled_once,
)

NAME = "properties"

# Error answers in the ResponseStatus shape of their SDKs, by ErrorCode.
ERRORS: dict[str, tuple[int, str]] = {
    "InvalidParameter": (400, "Schedule is more than 14 days ahead"),
    "Unauthorized": (401, "invalid credentials"),
    "Forbidden": (403, "SMS is not enabled on this property"),
    "InternalError": (500, "try again later"),
}


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/{NAME}/v2/Properties/{{property_sid}}/Messages", send)


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"ResponseStatus": {"ErrorCode": code, "Message": message}},
        status=status,
        headers=headers,
    )


async def send(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    if not request.headers.get("Authorization", "").startswith("Basic "):
        return _error(401, "Unauthorized", "Basic authentication required")
    body = await json_body(request)
    if not isinstance(body, dict):
        return _error(400, "InvalidRequest", "body must be a JSON object")
    to, text, sender = str(body.get("To") or ""), body.get("Text"), str(body.get("From") or "")
    if not to.startswith("+") or not text:
        return _error(400, "InvalidParameter", "To (E164 with +) and Text are required")
    trouble = sandbox.refusal(NAME, [to])
    if trouble is not None:
        return trouble
    if throttled_once(sandbox, NAME, text, body):
        return _error(429, "TooManyRequests", "rate limit exceeded", THROTTLED_HEADERS)
    requested = requested_error(text)
    if requested in ERRORS:
        status, message = ERRORS[requested]
        return _error(status, requested, message)
    outcome = sandbox.outcome_of(NAME, to)
    if outcome is Outcome.REJECTED:
        return _error(400, "InvalidDestination", f"{to} cannot receive SMS")
    sid = sandbox.next_id("MSANDBOX")
    leased = sender or "+61499000111"
    common = {
        "Action": "Webhook",
        "Account.Sid": "ACSANDBOX",
        "Property.Sid": request.match_info["property_sid"],
    }
    steps: list[tuple[int, Report]] = []
    receipt_url = body.get("DeliveryReceiptWebhookUri")
    # A receipt carries no outcome: only delivered messages get one (their only receipt).
    delivered = outcome in (Outcome.DELIVERED, Outcome.DUPLICATES, Outcome.PARTS, Outcome.REPLY)
    if receipt_url and body.get("DeliveryReceipt", True) and delivered:
        receipt = common | {
            "Event": "Message.DeliveryReceiptReceived",
            "Message.Sid": sid,
            "Message.From": leased,
            "Message.To": to,
            "Message.Text": str(text),
        }
        method = str(body.get("DeliveryReceiptWebhookMethod") or "POST").upper()
        copies = 2 if outcome is Outcome.DUPLICATES else 1
        steps.extend((2 + n, Report.form(receipt_url, receipt, method)) for n in range(copies))
    reply_url = body.get("WebhookUri") or receipt_url
    if outcome is Outcome.REPLY and reply_url:
        reply = common | {
            "Event": "Message.Received",
            "Message.Sid": sandbox.next_id("MREPLY"),
            "Message.From": to,
            "Message.To": leased,
            "Message.Text": reply_text(text),
        }
        method = str(body.get("WebhookMethod") or "POST").upper()
        steps.append((3, Report.form(reply_url, reply, method)))
    delay = sandbox.report_delay_s(NAME, [to])
    sandbox.later(steps, start_after_s=seconds_until(body.get("Schedule")) + delay)  # sent then
    return web.json_response(
        {
            "Message": {
                "MessageSid": sid,
                "AccountSid": "ACSANDBOX",
                "PropertySid": request.match_info["property_sid"],
                "From": leased,
                "To": to,
                "Text": text,
            }
        }
    )


def inbound(sandbox: Sandbox, handset: str, ours: str, text: str) -> Report:
    """A handset writing on its own, as the Properties API posts a received message."""
    return Report.form(
        sandbox.callback_urls[NAME],
        {
            "Action": "Webhook",
            "Account.Sid": "ACSANDBOX",
            "Property.Sid": "PSSANDBOX",
            "Event": "Message.Received",
            "Message.Sid": sandbox.next_id("MREPLY"),
            "Message.From": handset,
            "Message.To": ours,
            "Message.Text": text,
        },
    )
