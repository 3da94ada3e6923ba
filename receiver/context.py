"""What every request handler shares, owned by the application's lifecycle: the settings, the
provider registry, the database, the one HTTP client and the new-events signal. What only one
feature uses (the callback writer, the send rate limiter...) is kept under that feature's own
application key instead, so that this module depends on the shared layers alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import aiohttp
from aiohttp import web

from normalizers.registry import Registry
from receiver.config import Settings
from receiver.storage.notify import Signal
from receiver.storage.pool import Database


@dataclass(slots=True)
class AppContext:
    KEY: ClassVar[web.AppKey[AppContext]]

    settings: Settings
    registry: Registry
    expected_migrations: frozenset[int]
    db: Database
    http: aiohttp.ClientSession  # the one client for every provider's API
    signal: Signal  # "new events": wakes the dispatcher and event streams
    # The query endpoints' (messages, inbound, raw callbacks, stats): DATABASE_READ_URL's pool
    # (a replica, which may lag a little behind) when set, else `db` itself.
    read_db: Database


AppContext.KEY = web.AppKey("context", AppContext)
