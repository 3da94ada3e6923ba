"""The dispatcher: claims due deliveries (FOR UPDATE SKIP LOCKED, with a lease), posts each event
to its subscriber signed as Standard Webhooks 1.0 says, and records every attempt. Runs inside
`serve` or alone as `sms-receiver worker`; several may run side by side."""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import structlog
from standardwebhooks.webhooks import Webhook

from receiver.config import Settings
from receiver.delivery.addresses import BlockedAddress, check_literal_host, connector_options
from receiver.delivery.brokers import Brokers, PublishFailed
from receiver.metrics import ATTEMPTS
from receiver.storage import idempotency, outbox
from receiver.storage.batcher import Batcher, each_alone
from receiver.storage.notify import Signal
from receiver.storage.outbox import Claimed
from receiver.storage.pool import Database
from receiver.storage.refusals import purge_refusals

log = structlog.get_logger("receiver.delivery.dispatcher")

EXCERPT_BYTES = 4096
SHUTDOWN_GRACE_S = 5.0
MAX_RETRY_AFTER_S = 86400.0
RECORD_BATCH_MAX = 100
CLAIM_INTERVAL_S = 0.005
# How often what has outlived its use is cleared: subscription secrets rotated out whose window
# has ended, Idempotency-Key answers past their retention and claims that never answered, and
# records of refused callbacks past REFUSAL_RETENTION_DAYS.
SWEEP_S = 60.0
BACKLOG_WAIT_S = 0.05


def signature_header(secrets: tuple[str, ...], msg_id: str, timestamp: datetime, body: str) -> str:
    """`v1,<base64>` for each valid secret, space separated (both while a secret rotates)."""
    return " ".join(_signer(secret).sign(msg_id, timestamp, body) for secret in secrets)


@functools.lru_cache(maxsize=1024)  # one per subscription secret, not one per delivery
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def _blocked_cause(error: BaseException) -> BlockedAddress | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, BlockedAddress):
            return seen
        nested = getattr(seen, "os_error", None)
        if isinstance(nested, BlockedAddress):
            return nested
        seen = seen.__cause__ or seen.__context__
    return None


def retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds or as an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class Dispatcher:
    def __init__(self, db: Database, settings: Settings, signal: Signal) -> None:
        self.db = db
        self.settings = settings
        self.signal = signal
        self.tasks: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.stopping = asyncio.Event()
        # Attempts that end together are recorded together, in one statement.
        self.recorder = Batcher[outbox.Attempt, bool](
            self._record, writers=2, max_batch=RECORD_BATCH_MAX
        )
        self.brokers = Brokers(settings.destinations, settings.destination_max_in_flight)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            **connector_options(self.settings.webhook_allowed_networks)
        )
        self.session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": "sms-receiver-webhooks/0.1"}
        )
        log.info("dispatcher_started")
        concurrency = self.settings.webhook_concurrency
        backlog = False  # the last claim took all it asked for: more is probably due
        found_at = -math.inf  # when a claim last found work
        try:
            swept_at = -math.inf
            while not self.stopping.is_set():
                if time.monotonic() - swept_at >= SWEEP_S:
                    swept_at = time.monotonic()
                    await self._sweep()
                # Claims that find work come at most every CLAIM_INTERVAL_S: each finished
                # delivery wakes the loop, and a claim per delivery would cost the database more
                # than the deliveries themselves. A wake after an empty claim is served at once.
                pause = found_at + CLAIM_INTERVAL_S - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                wake = self.signal.current()
                waited = time.monotonic() - found_at
                if backlog and len(self.tasks) > concurrency // 2 and waited < BACKLOG_WAIT_S:
                    # Claim again once half are done (each finished delivery fires the
                    # signal), in one batch rather than one claim per finished delivery; but
                    # not longer than BACKLOG_WAIT_S: slow subscribers must not keep the
                    # free slots from the others.
                    await self._idle(wake, BACKLOG_WAIT_S - waited)
                    continue
                asked = concurrency - len(self.tasks)
                claimed = await self._claim(asked)
                for item in claimed:
                    self._start(item)
                if claimed:
                    found_at = time.monotonic()
                backlog = asked > 0 and len(claimed) == asked
                if not backlog:
                    await self._idle(wake)
        finally:
            if self.tasks:  # deliveries under way get a moment; the others' leases run out
                _, unfinished = await asyncio.wait(self.tasks, timeout=SHUTDOWN_GRACE_S)
                for task in unfinished:
                    task.cancel()
            try:  # the attempts that ended get their grace to be recorded, no more
                await asyncio.wait_for(self.recorder.close(), SHUTDOWN_GRACE_S)
            except TimeoutError:
                log.warning("attempts_not_recorded_at_stop")  # their leases run out
            await self.session.close()
            await self.brokers.close()
            log.info("dispatcher_stopped")

    async def stop(self) -> None:
        self.stopping.set()
        self.signal.fire()

    async def _sweep(self) -> None:
        try:
            async with self.db.connection() as connection:
                secrets = await outbox.forget_expired_secrets(connection)
                keys = await idempotency.purge_idempotency(
                    connection, self.settings.idempotency_stale_s
                )
                refusals = await purge_refusals(connection, self.settings.refusal_retention_days)
        except Exception as error:  # the database is away: next sweep
            log.warning("sweep_failed", error=repr(error))
            return
        if secrets or keys or refusals:
            log.info("swept", previous_secrets=secrets, idempotency_keys=keys, refusals=refusals)

    async def _claim(self, capacity: int) -> list[Claimed]:
        settings = self.settings
        if capacity <= 0:
            return []
        try:
            async with self.db.connection() as connection:
                return await outbox.claim_deliveries(
                    connection,
                    capacity,
                    settings.webhook_per_subscription,
                    settings.webhook_lease_s,
                )
        except Exception as error:  # the database is away: try again after the poll interval
            log.warning("claim_failed", error=repr(error))
            await self._idle(self.signal.current())
            return []

    async def _idle(self, wake: asyncio.Event, timeout_s: float | None = None) -> None:
        """Until woken (new events, a finished delivery), stopped, or the poll interval."""
        timeout_s = self.settings.webhook_poll_s if timeout_s is None else timeout_s
        woken = asyncio.ensure_future(self.signal.wait(timeout_s, wake))
        stopped = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({woken, stopped}, return_when=asyncio.FIRST_COMPLETED)
        woken.cancel()
        stopped.cancel()

    def _start(self, claimed: Claimed) -> None:
        task = asyncio.get_running_loop().create_task(self.deliver(claimed))
        self.tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self.tasks.discard(finished)
            self.signal.fire()  # room for another claim

        task.add_done_callback(done)

    async def deliver(self, claimed: Claimed) -> None:
        settings = self.settings
        assert self.session is not None
        body = claimed.body
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": claimed.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature_header(claimed.secrets, claimed.event_id, now, body),
        }
        status: int | None = None
        excerpt: str | None = None
        error: str | None = None
        retry_after: float | None = None
        started = time.perf_counter()
        accepted = False
        try:
            if claimed.destination is not None:
                # A broker's: the same body and Standard Webhooks headers, verified the same.
                excerpt = await self.brokers.publish(
                    claimed.destination,
                    claimed.event_id,
                    headers,
                    body.encode(),
                    settings.webhook_timeout_s,
                )
                accepted = True
            else:
                status, excerpt, retry_after = await self._post(claimed, headers, body)
        except PublishFailed as refused:
            error = str(refused)
        except BlockedAddress as refused:
            error = f"refused by the address guard: {refused}"
        except (aiohttp.ClientError, TimeoutError, OSError) as failure:
            blocked = _blocked_cause(failure)
            if blocked is not None:  # aiohttp wraps what the resolver raised
                error = f"refused by the address guard: {blocked}"
            else:
                error = f"{type(failure).__name__}: {failure}"[:500]
        except Exception as failure:  # whatever it is, it is an attempt to record, not a loop
            log.exception("delivery_crashed", delivery_id=claimed.delivery_id)
            error = f"{type(failure).__name__}: {failure}"[:500]
        latency_ms = round((time.perf_counter() - started) * 1000, 1)

        outcome, next_in, disable = self._judge(claimed, status, retry_after, accepted)
        attempt = outbox.Attempt(
            claimed=claimed,
            started_at=now,
            status_code=status,
            latency_ms=latency_ms,
            excerpt=excerpt,
            error=error,
            outcome=outcome,
            next_attempt_in_s=next_in,
            disable_subscription=disable,
        )
        try:
            owned = await self.recorder.submit(attempt)
        except asyncpg.ForeignKeyViolationError:
            log.info("delivery_gone", delivery_id=claimed.delivery_id)  # subscription deleted
            return
        except Exception as failure:
            # The lease runs out and the delivery is tried again: at least once, never lost.
            log.warning(
                "attempt_not_recorded", delivery_id=claimed.delivery_id, error=repr(failure)
            )
            return
        ATTEMPTS.labels(outcome if owned else "lease_lost").inc()
        log.info(
            "delivery_attempt",
            delivery_id=claimed.delivery_id,
            event_id=claimed.event_id,
            subscription_id=str(claimed.subscription_id),
            attempt=claimed.attempt,
            status=status,
            error=error,
            outcome=outcome,
            latency_ms=latency_ms,
            owned=owned,
        )

    async def _post(
        self, claimed: Claimed, headers: dict[str, str], body: str
    ) -> tuple[int, str, float | None]:
        """A webhook's attempt: its status, the answer's first bytes, and its Retry-After."""
        settings = self.settings
        assert self.session is not None
        assert claimed.url is not None
        check_literal_host(urlsplit(claimed.url).hostname or "", settings.webhook_allowed_networks)
        async with self.session.post(
            claimed.url,
            data=body.encode(),
            headers=headers,
            allow_redirects=False,  # a redirect is a failure, never followed
            timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s),
        ) as answer:
            excerpt = (await answer.content.read(EXCERPT_BYTES)).decode("utf-8", "replace")
            retry_after = (
                retry_after_s(answer.headers.get("Retry-After"))
                if answer.status in (429, 503)
                else None
            )
            return answer.status, excerpt, retry_after

    async def _record(self, attempts: list[outbox.Attempt]) -> list[bool | Exception]:
        """Records a batch of attempts; should the batch fail as a whole (a subscription
        deleted meanwhile, a conflict), each attempt alone, so that each gets its own answer."""
        settings = self.settings
        async with self.db.connection() as connection:
            try:
                return list(
                    await outbox.record_attempts(
                        connection, attempts, settings.webhook_disable_after_s
                    )
                )
            except (asyncpg.PostgresError, TimeoutError):
                if len(attempts) == 1:
                    raise

            async def record(attempt: outbox.Attempt) -> bool:
                [owned] = await outbox.record_attempts(
                    connection, [attempt], settings.webhook_disable_after_s
                )
                return owned

            return await each_alone(attempts, record)

    def _judge(
        self,
        claimed: Claimed,
        status: int | None,
        retry_after: float | None,
        accepted: bool = False,
    ) -> tuple[str, float | None, str | None]:
        """(delivery status, seconds to the next try, reason to disable the subscription);
        `accepted`: a broker has the event."""
        if accepted or (status is not None and 200 <= status < 300):
            return "delivered", None, None
        if status == 410:
            return "failed", None, "the subscriber answered 410 Gone"
        delays = self.settings.webhook_retry_delays_s
        if claimed.attempt > len(delays):
            return "failed", None, None
        if retry_after is not None:
            return "pending", retry_after, None
        delay = delays[claimed.attempt - 1]
        return "pending", delay * random.uniform(0.9, 1.1), None  # noqa: S311
