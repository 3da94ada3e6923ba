"""`make faults`' send scenario: one-recipient sends at a fixed rate through a route over swift
then carrierx (with redelivery after the fact), against `serve --sandbox`; swift goes down (503
to every send) for 20 s in the middle. Afterwards, from the simulated providers' own counts per
number and the hub's rows: every accepted message reached a final status, no recipient was
sent twice by send-time failover (a number delivered by its first provider was taken once in
all), and redelivery sent each failed recipient once (a second attempt, never a third; taken
twice in all unless its second provider was down then). Runs on
loopback, bounded in time and requests, and stops by itself."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import asyncpg

from bench.fanout import wait_ready
from bench.run import free_port, stop_server

RATE = 8.0  # sends a second
SECONDS = 40.0  # of sends
DOWN_AT_S, DOWN_FOR_S = 10.0, 20.0
SILENCE_S = 15  # a silent recipient expires (then is redelivered) this long after its send
SETTLE_S = 90.0  # after the sends, for every recipient to end
# Last digits (the simulation): 1 delivered, 2 undelivered, 7 never reported.
MIX = "1111111127"


def env(dsn: str, port: int) -> dict[str, str]:
    return {
        "DATABASE_URL": dsn,
        "API_AUTH": "false",
        "LOG_LEVEL": "warning",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "SANDBOX_DELAY_S": "0.2",
        "SEND_RATE_PER_S": "1000",
        "SEND_BURST": "1000",
        "SEND_ATTEMPTS": "2",
        "SILENCE_TIMEOUT_S": str(SILENCE_S),
        "SILENCE_SWEEP_S": "1",
        "SCHEDULE_POLL_S": "0.5",
        "HEALTH_PROBE_S": "5",
        "WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
    }


ROUTE = {
    "match": {"country": ["GB"]},
    "providers": ["swift", "carrierx"],
    "redeliver": {"on": ["undelivered", "expired"], "within_s": 600, "max_attempts": 2},
}


async def scenario(dsn: str, spawn: Any) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = spawn(["serve", "--sandbox", "--port", str(port)], env(dsn, port))
    accepted: dict[str, str] = {}  # number -> message id
    refused: list[int] = []
    notes: list[str] = []
    started = time.monotonic()
    try:
        await wait_ready(port)
        async with aiohttp.ClientSession() as http:
            async with http.put(f"{base}/v1/routes/faults", json=ROUTE) as made:
                assert made.status in (200, 201), await made.text()

            async def outage() -> None:
                await asyncio.sleep(DOWN_AT_S)
                await http.put(f"{base}/v1/sandbox/providers/swift", json={"mode": "down"})
                notes.append(f"swift down at {time.monotonic() - started:.1f} s")
                await asyncio.sleep(DOWN_FOR_S)
                await http.put(f"{base}/v1/sandbox/providers/swift", json={"mode": "normal"})
                notes.append(f"swift back at {time.monotonic() - started:.1f} s")

            async def one(n: int) -> None:
                number = f"+4477009{n:04d}{MIX[n % len(MIX)]}"
                body = {"to": [number], "from": "+447700900999", "body": f"faults {n}"}
                async with http.post(f"{base}/v1/messages", json=body) as answer:
                    if answer.status == 201:
                        accepted[number] = (await answer.json())["id"]
                    else:
                        refused.append(answer.status)

            sends = []
            outage_task = asyncio.create_task(outage())
            for n in range(int(RATE * SECONDS)):
                sends.append(asyncio.create_task(one(n)))
                await asyncio.sleep(1 / RATE)
            await asyncio.gather(*sends)
            await outage_task
            deadline = time.monotonic() + SETTLE_S
            open_left = -1
            while time.monotonic() < deadline:
                open_left = await still_open(dsn)
                if open_left == 0:
                    break
                await asyncio.sleep(1)
            async with http.get(f"{base}/v1/sandbox/sent") as answer:
                taken = (await answer.json())["data"]
    finally:
        stop_server(serve)
    return await verdict(dsn, accepted, refused, taken, open_left, notes, started)


async def still_open(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        left: int = await connection.fetchval(
            "SELECT count(*) FROM message_recipients"
            " WHERE message_id IS NOT NULL AND NOT superseded"
            " AND (NOT final OR redeliver_until IS NOT NULL)"
        )
        return left
    finally:
        await connection.close()


async def verdict(
    dsn: str,
    accepted: dict[str, str],
    refused: list[int],
    taken: dict[str, dict[str, int]],
    open_left: int,
    notes: list[str],
    started: float,
) -> dict[str, Any]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT recipient, provider, attempt, superseded, status, final, failure_kind,"
            " synthetic_final, provider_message_id LIKE 'pending:%' AS never_taken"
            " FROM message_recipients"
            " WHERE message_id = ANY($1::uuid[])",
            [uuid.UUID(m) for m in accepted.values()],
        )
    finally:
        await connection.close()
    attempts: dict[str, list[Any]] = {}
    for row in rows:
        attempts.setdefault(row["recipient"], []).append(row)
    failures: list[str] = []
    times_taken = {
        number: sum(by_number.get(number, 0) for by_number in taken.values()) for number in accepted
    }
    failed_over = redelivered = 0
    for number in accepted:
        mine = sorted(attempts.get(number, []), key=lambda r: r["attempt"])
        latest = next((r for r in mine if not r["superseded"]), None)
        if latest is None or not latest["final"]:
            failures.append(f"{number} never ended")
            continue
        first_taken = bool(mine) and not mine[0]["never_taken"]
        if len(mine) > 1:
            if first_taken:
                redelivered += 1
            else:
                failed_over += 1
        if times_taken[number] > 2 or times_taken[number] > len(mine):
            failures.append(f"{number} taken {times_taken[number]} times over {len(mine)} attempts")
        if number.endswith("1") and times_taken[number] != 1:
            failures.append(f"{number} (delivered at once) taken {times_taken[number]} times")
        taken_once = [r for r in mine if not r["never_taken"]]
        if taken_once and first_taken:
            first = mine[0]
            # The route's rule: undelivered or expired, temporary (or the hub's own expiry).
            again = first["status"] in ("undelivered", "expired") and (
                first["failure_kind"] == "temporary" or first["synthetic_final"]
            )
            if again and len(mine) != 2:
                failures.append(f"{number} ({first['status']}) had {len(mine)} attempts, not 2")
            if not again and len(mine) != 1:
                failures.append(f"{number} ({first['status']}) sent again, not to be")
    if not failed_over:
        failures.append("nothing failed over while swift was down")
    if open_left:
        failures.append(f"{open_left} recipients still open after {SETTLE_S:g} s")
    return {
        "fault": "provider_down_during_sends",
        "sends": len(accepted) + len(refused),
        "accepted": len(accepted),
        "refused": len(refused),
        "failed_over_at_send": failed_over,
        "redelivered": redelivered,
        "taken_by_swift": sum(taken.get("swift", {}).values()),
        "taken_by_carrierx": sum(taken.get("carrierx", {}).values()),
        "taken_twice": sum(1 for n in times_taken.values() if n == 2),
        "notes": notes,
        "failures": failures[:20],
        "elapsed_s": round(time.monotonic() - started, 1),
        "ok": not failures and not refused,
    }


def line(result: dict[str, Any]) -> str:
    return (
        f"{result['fault']}: {result['accepted']} of {result['sends']} sends accepted,"
        f" {result['failed_over_at_send']} failed over at send, {result['redelivered']}"
        f" redelivered once; swift took {result['taken_by_swift']}, carrierx"
        f" {result['taken_by_carrierx']}; {result['taken_twice']} numbers taken twice (each a"
        f" redelivery)  {'ok' if result['ok'] else 'FAILED: ' + '; '.join(result['failures'])}"
    )
