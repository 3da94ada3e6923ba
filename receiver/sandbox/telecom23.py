"""Simulated 23 Telecom: POST /api/v1/sms/send (X-API-Key, 1..100 recipients, per-recipient
results), then the delivery webhook to the account's delivery_url, signed when the hub has the
signing secret. A number ending in 99 gets `500 DB_ERROR` on its first try (the documented
all-or-nothing failure), to exercise the hub's retry."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
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

NAME = "telecom23"
WORDS = {"sent": "ENROUTE", "delivered": "DELIVRD", "undelivered": "UNDELIV", "expired": "EXPIRED"}
# The documented error answers that a valid request can still get, by error_code.
ERRORS: dict[str, tuple[int, str]] = {
    "INVALID_BODY": (400, "Cannot parse request body"),
    "INVALID_TO": (400, "Missing or empty to array"),
    "INVALID_MESSAGE": (400, "Missing or empty message"),
    "INVALID_SENDER": (400, "Missing or empty sender_id"),
    "TOO_MANY_RECIPIENTS": (400, "Over 100 recipients"),
    "INSUFFICIENT_BALANCE": (402, "Insufficient balance"),
    "NO_SMS_ACCESS": (403, "SMS not enabled on your account"),
    "CONFIG_ERROR": (403, "SMS credentials incomplete - contact support"),
    "WORKSPACE_NOT_AVAILABLE": (403, "Target workspace was deleted"),
    "DB_ERROR": (500, "Could not queue (atomic rollback), retry the whole request"),
}
SLOW_ANSWER_S = 3.0
CODES = {"DELIVRD": "000", "UNDELIV": "001", "EXPIRED": "002", "ENROUTE": ""}


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"/{NAME}/api/v1/sms/send", send)


def _error(
    status: int, code: str, description: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"status": False, "error_code": code, "description": description},
        status=status,
        headers=headers,
    )


def _signed(sandbox_secret: str | None, report: Report) -> Report:
    if sandbox_secret is None or report.body is None:
        return report
    stamp = str(int(time.time()))
    digest = hmac.new(
        sandbox_secret.encode(), stamp.encode() + b"." + report.body, hashlib.sha256
    ).hexdigest()
    headers = dict(report.headers) | {
        "X-Webhook-Timestamp": stamp,
        "X-Webhook-Signature": f"sha256={digest}",
    }
    return Report(report.method, report.url, report.body, headers)


async def send(request: web.Request) -> web.Response:
    sandbox = sandbox_of(request)
    if not request.headers.get("X-API-Key"):
        return _error(401, "INVALID_API_KEY", "X-API-Key header is missing")
    body = await json_body(request)
    if not isinstance(body, dict):
        return _error(400, "INVALID_BODY", "Cannot parse request body")
    to, text, sender = body.get("to"), body.get("message"), body.get("sender_id")
    if not isinstance(to, list) or not to:
        return _error(400, "INVALID_TO", "Missing or empty to array")
    if not text:
        return _error(400, "INVALID_MESSAGE", "Missing or empty message")
    if not sender:
        return _error(400, "INVALID_SENDER", "Missing or empty sender_id")
    if len(to) > 100:
        return _error(400, "TOO_MANY_RECIPIENTS", "Over 100 recipients")
    trouble = sandbox.refusal(NAME, [str(n) for n in to])
    if trouble is not None:
        return trouble
    if throttled_once(sandbox, NAME, text, body):
        return _error(429, "RATE_LIMITED", "Too many requests, retry later", THROTTLED_HEADERS)
    requested = requested_error(text)
    if requested == "SLOW":  # answers after the hub has given up waiting, having sent it
        await asyncio.sleep(SLOW_ANSWER_S)
    if requested == "INSUFFICIENT_BALANCE":  # documented with the balance and the cost
        return web.json_response(
            {
                "status": False,
                "error_code": requested,
                "description": "Balance too low",
                "balance": 0.02,
                "estimated_cost": round(0.0085 * len(to) * segment(str(text)).segments, 4),
                "currency": "GBP",
                "total_recipients": len(to),
                "billable_recipients": len(to),
                "segments": segment(str(text)).segments,
            },
            status=402,
        )
    if requested in ERRORS:
        http_status, description = ERRORS[requested]
        return _error(http_status, requested, description)
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    if any(str(number).endswith("99") for number in to):
        tries = sandbox.attempts[fingerprint] = sandbox.attempts.get(fingerprint, 0) + 1
        if tries == 1:
            return _error(500, "DB_ERROR", "Could not queue (atomic rollback), retry")
    parts = segment(str(text))
    results: list[dict[str, Any]] = []
    url = sandbox.callback_urls[NAME]
    secret = sandbox.signing_secrets.get(NAME)
    steps = []
    for number in map(str, to):
        outcome = sandbox.outcome_of(NAME, number)
        if outcome is Outcome.REJECTED:
            results.append(
                {"dnis": number, "segments": parts.segments, "status": "blocked_country"}
            )
            continue
        message_id = sandbox.next_id("api_42_")
        results.append(
            {
                "dnis": number,
                "message_id": message_id,
                "segments": parts.segments,
                "status": "accepted",
            }
        )
        sent_at = datetime.now(UTC)
        for step, (word, offset) in enumerate(final_reports(outcome), start=1):
            status = WORDS[word]
            stamp = (sent_at + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%SZ")
            steps.append(
                (
                    step,
                    _signed(
                        secret,
                        Report.json_post(
                            url,
                            {
                                "message_id": message_id,
                                "recipient": number,
                                "sender_id": sender,
                                "status": status,
                                "status_code": CODES[status],
                                "num_parts": parts.segments,
                                "cost": 0.0085 * parts.segments if status == "DELIVRD" else 0,
                                "timestamp": stamp,
                            },
                            **{"User-Agent": "23Telecom-Webhooks/1.0"},
                        ),
                    ),
                )
            )
        if outcome is Outcome.REPLY:
            steps.append(
                (
                    3,
                    _signed(
                        secret,
                        Report.json_post(
                            url,
                            {
                                "direction": "inbound",
                                "message_id": sandbox.next_id("mo_42_"),
                                "from": number,
                                "to": sender,
                                "message": reply_text(text),
                                "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            },
                        ),
                    ),
                )
            )
    sandbox.later(steps, start_after_s=sandbox.report_delay_s(NAME, [str(n) for n in to]))
    accepted = [r for r in results if r["status"] == "accepted"]
    return web.json_response(
        {
            "status": True,
            "messages": [
                {"dnis": r["dnis"], "message_id": r["message_id"], "segment_num": r["segments"]}
                for r in accepted
            ],
            "results": results,
            "summary": {
                "total_recipients": len(results),
                "total_segments": parts.segments * len(results),
                "total_cost": round(0.0085 * parts.segments * len(accepted), 4),
                "encoding": parts.encoding,
                "accepted_count": len(accepted),
                "blocked_count": len(results) - len(accepted),
                "queue_error_count": 0,
                "config_error_count": 0,
                "db_error_count": 0,
            },
        }
    )


def inbound(sandbox: Sandbox, handset: str, ours: str, text: str) -> Report:
    """A handset writing on its own: 23 Telecom's inbound webhook (signed when the hub holds
    the secret)."""
    return _signed(
        sandbox.signing_secrets.get(NAME),
        Report.json_post(
            sandbox.callback_urls[NAME],
            {
                "direction": "inbound",
                "message_id": sandbox.next_id("mo_42_"),
                "from": handset,
                "to": ours,
                "message": text,
                "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        ),
    )
