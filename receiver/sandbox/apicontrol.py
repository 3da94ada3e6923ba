"""Simulated apicontrol (Barritel): POST /sms/message, then delivery reports of the kind the
message asked for (summary, details, per_recipient_final, per_recipient) to its callbackURL, and
replies as inbound messages."""

from __future__ import annotations

from collections import Counter
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
    seconds_until,
    throttled_once,
)

NAME = "apicontrol"
KINDS = ("summary", "details", "per_recipient_final", "per_recipient")

# The documented error answers (seed 000), by name.
ERRORS: dict[str, tuple[int, dict[str, Any]]] = {
    "400": (
        400,
        {
            "status_code": 400,
            "status_msg": "Invalid input",
            "error": "invalid msisdn",
            "type": "validation",
            "arguement": "to",
        },
    ),
    "401": (401, {"status_code": 401, "status_msg": "Unauthorized"}),
    "403": (
        403,
        {
            "status_code": 403,
            "status_msg": "Invalid input",
            "error": "not permitted",
            "type": "permission",
            "arguement": "from",
            "bad_value": "ACME",
            "info": "sender not registered",
        },
    ),
    "404": (404, {"status_code": 404, "status_msg": "Not Found", "info": "no such account"}),
    "405": (405, {"status_code": 405, "status_msg": "Method Not Allowed", "Allow": ["POST"]}),
}


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/{NAME}/sms/message", send)


def _invalid(argument: str, error: str) -> web.Response:
    return web.json_response(
        {
            "status_code": 400,
            "status_msg": "Invalid input",
            "error": error,
            "type": "validation",
            "arguement": argument,
        },
        status=400,
    )


async def send(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    if not request.headers.get("Authorization"):
        return web.json_response({"status_code": 401, "status_msg": "Unauthorized"}, status=401)
    body = await json_body(request)
    if not isinstance(body, dict):
        return _invalid("body", "not a JSON object")
    to, text = body.get("to"), body.get("body")
    if not isinstance(to, list) or not to:
        return _invalid("to", "a list of msisdns is required")
    if not body.get("from"):
        return _invalid("from", "required")
    if not text:
        return _invalid("body", "required")
    trouble = sandbox.refusal(NAME, [str(n) for n in to])
    if trouble is not None:
        return trouble
    if throttled_once(sandbox, NAME, text, body):
        return web.json_response(
            {"status_code": 429, "status_msg": "Too Many Requests"},
            status=429,
            headers=THROTTLED_HEADERS,
        )
    error = ERRORS.get(requested_error(text) or "")
    if error is not None:
        return web.json_response(error[1], status=error[0])
    kind = body.get("delivery_report", "per_recipient")
    if kind is not None and kind not in KINDS:
        return _invalid("delivery_report", f"one of {', '.join(KINDS)}")
    parts = segment(str(text)).segments
    if body.get("num_parts_max") is not None and parts > int(body["num_parts_max"]):
        return web.json_response(
            {
                "num_parts": parts,
                "num_parts_max": body["num_parts_max"],
                "info": f"message needs {parts} parts; not sent",
            },
        )
    message_id = sandbox.next_number()
    url = body.get("callbackURL") or sandbox.callback_urls[NAME]
    # Paused: "will not be sent until released", and the sandbox never releases it (silence
    # then ends it); a send_at is honoured: the reports start then.
    if kind is not None and not body.get("paused"):
        numbers = [str(n) for n in to]
        reports = _reports(sandbox, url, message_id, body, numbers, kind)
        delay = sandbox.report_delay_s(NAME, numbers)
        sandbox.later(reports, start_after_s=seconds_until(body.get("send_at")) + delay)
    return web.json_response(
        {"messageID": message_id, "num_parts": parts, "num_recipients": len(to)}, status=201
    )


def _report(
    message_id: int,
    body: dict[str, Any],
    statuses: dict[str, Any],
    kind: str,
    offset_s: int,
) -> dict[str, Any]:
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=offset_s)
    return {
        "tstamp": moment.strftime("%Y-%m-%d %H:%M:%S"),  # the account's naive form, UTC
        "message_type": "sms",
        "ref": body.get("ref"),
        "messageID": message_id,
        "balance_used": len(statuses),
        "statuses": statuses,
        "callback_type": kind,
    }


def _reports(
    sandbox: Sandbox,
    url: str,
    message_id: int,
    body: dict[str, Any],
    numbers: list[str],
    kind: str,
) -> list[tuple[int, Report]]:
    steps: list[tuple[int, Report]] = []
    finals: dict[str, str] = {}
    for number in numbers:
        outcome = sandbox.outcome_of(NAME, number)
        if outcome is Outcome.SILENT:
            continue
        reports = [("rejected", 1)] if outcome is Outcome.REJECTED else final_reports(outcome)
        if kind == "per_recipient_final":
            reports = [(word, offset) for word, offset in reports if word != "sent"]
        if kind in ("per_recipient", "per_recipient_final"):
            steps.extend(
                (step, Report.json_post(url, _report(message_id, body, {number: w}, kind, at)))
                for step, (w, at) in enumerate(reports, start=1)
            )
        finals[number] = next(word for word, _ in reports if word != "sent")
        if outcome is Outcome.REPLY:
            reply = {
                "messageID": message_id + 500_000,
                "from": number,
                "to": body.get("from"),
                "body": reply_text(body.get("body")),
                "ref": "sandbox number",
                "callback_type": "inbound_message",
                "tstamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "message_type": "sms",
            }
            steps.append((3, Report.json_post(url, reply)))
    if kind == "details" and finals:
        steps.append((2, Report.json_post(url, _report(message_id, body, finals, kind, 2))))
    if kind == "summary" and finals:
        counts = dict(Counter(finals.values()))
        steps.append((2, Report.json_post(url, _report(message_id, body, counts, kind, 2))))
    return steps


def inbound(sandbox: Sandbox, handset: str, ours: str, text: str) -> Report:
    """A handset writing on its own, as apicontrol reports an inbound message."""
    return Report.json_post(
        sandbox.callback_urls[NAME],
        {
            "messageID": sandbox.next_number() + 500_000,
            "from": handset.lstrip("+"),
            "to": ours,
            "body": text,
            "ref": "sandbox number",
            "callback_type": "inbound_message",
            "tstamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "message_type": "sms",
        },
    )
