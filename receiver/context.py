"""What the request handlers share, owned by the application's lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import aiohttp
import asyncpg
from aiohttp import web

from normalizers.registry import Registry
from receiver.config import Settings
from receiver.ratelimit import RateLimiter
from receiver.signal import Signal

if TYPE_CHECKING:  # they need the pipeline, which needs this module
    from receiver.groupcommit import CallbackWriter
    from receiver.spool import Spool


@dataclass(slots=True)
class AppContext:
    KEY: ClassVar[web.AppKey[AppContext]]

    settings: Settings
    registry: Registry
    expected_migrations: frozenset[int]
    pool: asyncpg.Pool
    http: aiohttp.ClientSession  # the one client for every provider's API
    signal: Signal  # "new events": wakes the dispatcher and event streams
    callbacks: CallbackWriter  # stores callbacks, those arriving together in one transaction
    send_limiter: RateLimiter  # requests to the send API, per API key
    spool: Spool | None = None  # callbacks kept while Postgres cannot take them (SPOOL_DIR)


AppContext.KEY = web.AppKey("context", AppContext)
