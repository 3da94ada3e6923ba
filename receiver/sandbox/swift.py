"""Simulated Swift SMS Gateway: POST /v1/sms (Bearer, 200/207/422 with per-recipient results and
part ids), then DLRs (one per part for numbers ending in 6) and incoming messages to the switch's
webhook."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from normalizers.encoding import segment
from receiver.sandbox.common import (
    RATE_LIMITED,
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

NAME = "swift"


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/{NAME}/v1/sms", send)


def _authorised(sandbox: Sandbox, report: Report) -> Report:
    """The switch's BEARER auth, when the hub holds the secret."""
    secret = sandbox.signing_secrets.get(NAME)
    if secret is None:
        return report
    headers = dict(report.headers) | {"Authorization": f"Bearer {secret}"}
    return Report(report.method, report.url, report.body, headers)


def _stamp(offset_s: float = 0) -> str:
    moment = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def send(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return web.json_response({"error_code": "unauthorized"}, status=401)
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("to"), list) or not body.get("body"):
        return web.json_response({"error_code": "bad_message"}, status=422)
    trouble = sandbox.refusal(NAME, [str(n) for n in body["to"]])
    if trouble is not None:
        return trouble
    if throttled_once(sandbox, NAME, body["body"], body):
        return web.json_response(
            {"error_code": "too_many_requests"}, status=429, headers=THROTTLED_HEADERS
        )
    requested = requested_error(body["body"])
    if requested in ("unauthorized", "internal_error"):
        status = 401 if requested == "unauthorized" else 500
        return web.json_response({"error_code": requested}, status=status)
    sender = str(body.get("from") or "12003004000").lstrip("+")
    parts = segment(str(body["body"])).segments
    url = sandbox.callback_urls[NAME]
    results: list[dict[str, Any]] = []
    steps: list[tuple[int, Report]] = []
    for number in (str(n).lstrip("+") for n in body["to"]):
        outcome = sandbox.outcome_of(NAME, number)
        message_id = sandbox.next_id("01JSWIFTMSG")
        part_ids = [sandbox.next_id("01JSWIFTPRT") for _ in range(parts)]
        rejected = outcome is Outcome.REJECTED or requested not in (None, RATE_LIMITED)
        code = requested or "recipient_error"
        results.append(
            {
                "direction": "OUTBOUND",
                "error_code": code if rejected else "OK",
                "expires_at": body.get("expires_at") or _stamp(86400),
                "from": sender,
                "id": message_id,
                "origin_id": body.get("id"),
                "parts": [{"id": part} for part in part_ids],
                "schedule_at": _stamp(),
                "status": "NEW",
                "timestamp": _stamp(),
                "to": number,
                "type": "SMS",
            }
        )
        if rejected or not body.get("request_dlr", True):
            continue
        subjects = part_ids if outcome is Outcome.PARTS else [message_id]
        sent_reports: dict[tuple[str, str, int], dict[str, Any]] = {}
        for step, (word, offset) in enumerate(final_reports(outcome), start=1):
            for subject in subjects:
                # A report sent twice is the very same report: same id, same time.
                dlr = sent_reports.setdefault(
                    (subject, word, offset),
                    {
                        "delivery_status": word,
                        "from": sender,
                        "id": sandbox.next_id("01JSWIFTDLR"),
                        "sms": {"id": subject},
                        "timestamp": _stamp(offset),
                        "to": number,
                        "type": "sms_dlr",
                    },
                )
                steps.append((step, _authorised(sandbox, Report.json_post(url, dlr))))
        if outcome is Outcome.REPLY:
            incoming = {
                "body": reply_text(body["body"]),
                "from": number,
                "id": sandbox.next_id("01JSWIFTMO"),
                "timestamp": _stamp(3),
                "to": sender,
                "type": "sms",
            }
            steps.append((3, _authorised(sandbox, Report.json_post(url, incoming))))
    sandbox.later(steps, start_after_s=sandbox.report_delay_s(NAME, list(map(str, body["to"]))))
    ok = [r for r in results if r["error_code"] == "OK"]
    status = 200 if len(ok) == len(results) else 207 if ok else 422
    return web.json_response({"results": results}, status=status)


def inbound(sandbox: Sandbox, handset: str, ours: str, text: str) -> Report:
    """A handset writing on its own: Swift's incoming message to the switch's webhook."""
    incoming = {
        "body": text,
        "from": handset.lstrip("+"),
        "id": sandbox.next_id("01JSWIFTMO"),
        "timestamp": _stamp(),
        "to": ours.lstrip("+"),
        "type": "sms",
    }
    return _authorised(sandbox, Report.json_post(sandbox.callback_urls[NAME], incoming))
