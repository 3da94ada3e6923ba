"""Destinations beyond webhooks: an event published to a NATS JetStream subject or a RabbitMQ
exchange, counted delivered only once the broker has it (the stream's acknowledgement; the
publisher confirm of a routed, persistent message). One connection per destination name per
instance, opened on first use and re-opened after a failure no sooner than its backoff allows,
with a bounded number of publishes awaiting the broker: a broker that is down fails its own
attempts quickly and never holds a webhook or a callback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq.exceptions
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext

from receiver.config import DestinationSettings

log = structlog.get_logger("receiver.delivery.brokers")

# A broker that could not be reached is tried again no sooner than this (doubling to the most).
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
CONNECT_TIMEOUT_S = 2.0


class PublishFailed(Exception):
    """The broker does not have the event: said in the attempt's `last_error`."""


@dataclass
class Backoff:
    failures: int = 0
    next_try: float = 0.0

    def failed(self) -> None:
        self.failures += 1
        wait = min(RECONNECT_MIN_S * 2 ** (self.failures - 1), RECONNECT_MAX_S)
        self.next_try = time.monotonic() + wait

    def succeeded(self) -> None:
        self.failures, self.next_try = 0, 0.0

    def check(self, name: str) -> None:
        left = self.next_try - time.monotonic()
        if left > 0:
            raise PublishFailed(f"destination {name!r} unreachable; trying again in {left:.1f} s")


@dataclass
class Connected:
    """A destination's one connection: made under `lock`, dropped after a failure, made again
    no sooner than `backoff` allows."""

    name: str
    url: str
    in_flight: asyncio.Semaphore
    backoff: Backoff = field(default_factory=Backoff)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _drop(self) -> None:
        raise NotImplementedError

    async def _forget(self) -> None:
        async with self.lock:
            await self._drop()

    async def close(self) -> None:
        await self._forget()


@dataclass
class JetStream(Connected):
    """Publishes with the event id as `Nats-Msg-Id`, so the stream's duplicate window drops the
    hub's own retries of an event it already has."""

    client: NatsClient | None = None
    stream: JetStreamContext | None = None

    async def _context(self) -> JetStreamContext:
        async with self.lock:
            if self.client is not None and self.client.is_connected and self.stream is not None:
                return self.stream
            self.backoff.check(self.name)
            await self._drop()
            try:
                self.client = await asyncio.wait_for(
                    nats.connect(
                        self.url,
                        connect_timeout=CONNECT_TIMEOUT_S,
                        # One try (0 means for ever in nats-py): this class reconnects, with
                        # its backoff, and says why in the attempt rather than in a log.
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0.1,
                        error_cb=_quiet,
                        name="sms-receiver",
                    ),
                    2 * CONNECT_TIMEOUT_S,
                )
            except Exception as error:
                self.backoff.failed()
                raise PublishFailed(f"cannot connect to {self.name!r}: {_said(error)}") from None
            self.backoff.succeeded()
            self.stream = self.client.jetstream()
            return self.stream

    async def publish(
        self,
        where: Mapping[str, Any],
        event_id: str,
        headers: dict[str, str],
        body: bytes,
        timeout_s: float,
    ) -> str:
        subject = str(where["subject"])
        async with self.in_flight:
            stream = await self._context()
            try:
                ack = await stream.publish(
                    subject, body, timeout=timeout_s, headers={**headers, "Nats-Msg-Id": event_id}
                )
            except nats.js.errors.NoStreamResponseError:
                raise PublishFailed(
                    f"no JetStream stream takes the subject {subject!r} on {self.name!r}"
                ) from None
            except nats.js.errors.APIError as error:
                raise PublishFailed(f"JetStream refused it: {_said(error)}") from None
            except (nats.errors.Error, TimeoutError, OSError) as error:
                await self._forget()
                raise PublishFailed(f"{self.name!r}: {_said(error)}") from None
        duplicate = " (a duplicate: the stream had it)" if ack.duplicate else ""
        return f"stored by stream {ack.stream} as {ack.seq}{duplicate}"

    async def _drop(self) -> None:
        client, self.client, self.stream = self.client, None, None
        if client is not None:
            with contextlib.suppress(Exception):  # already gone
                await client.close()


@dataclass
class RabbitMQ(Connected):
    """Publishes persistent messages, mandatory, on a channel with publisher confirms: a nack or
    a message no queue takes (returned) is a failed attempt."""

    connection: aio_pika.abc.AbstractConnection | None = None
    channel: aio_pika.abc.AbstractChannel | None = None
    exchanges: dict[str, aio_pika.abc.AbstractExchange] = field(default_factory=dict)

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        async with self.lock:
            if (
                self.connection is not None
                and not self.connection.is_closed
                and self.channel is not None
                and not self.channel.is_closed
            ):
                return self.channel
            self.backoff.check(self.name)
            await self._drop()
            try:
                self.connection = await aio_pika.connect(self.url, timeout=CONNECT_TIMEOUT_S)
                self.channel = await self.connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            except Exception as error:
                self.backoff.failed()
                await self._drop()
                raise PublishFailed(f"cannot connect to {self.name!r}: {_said(error)}") from None
            self.backoff.succeeded()
            return self.channel

    async def publish(
        self,
        where: Mapping[str, Any],
        event_id: str,
        headers: dict[str, str],
        body: bytes,
        timeout_s: float,
    ) -> str:
        exchange_name, routing_key = str(where["exchange"]), str(where["routing_key"])
        message = aio_pika.Message(
            body,
            message_id=event_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=dict(headers),
        )
        async with self.in_flight:
            channel = await self._channel()
            try:
                exchange = self.exchanges.get(exchange_name)
                if exchange is None:  # looked up once per channel, not once per publish
                    exchange = (
                        channel.default_exchange
                        if exchange_name == ""
                        else await channel.get_exchange(exchange_name, ensure=True)
                    )
                    self.exchanges[exchange_name] = exchange
                await exchange.publish(
                    message, routing_key=routing_key, mandatory=True, timeout=timeout_s
                )
            except aiormq.exceptions.DeliveryError as error:
                returned = error.message is not None
                raise PublishFailed(
                    f"no queue bound to exchange {exchange_name!r} takes routing key"
                    f" {routing_key!r}"
                    if returned
                    else f"the broker refused it (nack): {_said(error)}"
                ) from None
            except aiormq.exceptions.ChannelNotFoundEntity:
                await self._forget()  # the channel is closed by the refusal
                raise PublishFailed(f"no exchange {exchange_name!r} on {self.name!r}") from None
            except (aiormq.exceptions.AMQPError, TimeoutError, OSError, RuntimeError) as error:
                await self._forget()
                raise PublishFailed(f"{self.name!r}: {_said(error)}") from None
        return f"confirmed by {self.name!r}"

    async def _drop(self) -> None:
        connection, self.connection, self.channel = self.connection, None, None
        self.exchanges.clear()  # the channel's: found again on the next one
        if connection is not None:
            with contextlib.suppress(Exception):  # already gone
                await connection.close()


Publisher = JetStream | RabbitMQ


class Brokers:
    """The publishers of the destinations the settings name, made on first use."""

    def __init__(self, destinations: Mapping[str, DestinationSettings], in_flight: int) -> None:
        self.destinations = destinations
        self.in_flight = in_flight
        self.publishers: dict[str, Publisher] = {}

    def _publisher(self, name: str, kind: str) -> Publisher:
        publisher = self.publishers.get(name)
        if publisher is not None:
            return publisher
        settings = self.destinations.get(name)
        if settings is None:
            raise PublishFailed(f"no destination named {name!r} in the settings")
        if settings.kind != kind:
            raise PublishFailed(f"destination {name!r} is a {settings.kind} broker, not {kind}")
        url = settings.url.get_secret_value()
        semaphore = asyncio.Semaphore(self.in_flight)
        made: Publisher = (
            JetStream(name, url, semaphore)
            if kind == "jetstream"
            else RabbitMQ(name, url, semaphore)
        )
        self.publishers[name] = made
        return made

    async def publish(
        self,
        destination: Mapping[str, Any],
        event_id: str,
        headers: dict[str, str],
        body: bytes,
        timeout_s: float,
    ) -> str:
        """What the broker said when it took the event; PublishFailed when it did not."""
        publisher = self._publisher(str(destination["name"]), str(destination["kind"]))
        return await publisher.publish(destination, event_id, headers, body, timeout_s)

    async def close(self) -> None:
        for publisher in self.publishers.values():
            await publisher.close()


async def _quiet(error: Exception) -> None:
    """nats-py's error callback: the attempt records the error, the log need not."""


def _said(error: BaseException) -> str:
    return (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)[:300]
