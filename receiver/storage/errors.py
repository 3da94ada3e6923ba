"""What a database error means for the caller: "not now" (retry later) or "not this" (the data
itself is refused), without any notion of HTTP."""

from __future__ import annotations

import asyncio

import asyncpg


class DatabaseUnavailable(Exception):
    """Raised by the hub itself when the database cannot take the work now (not keeping up, or
    refusing even a callback's raw row): answered 503, but never spooled, since the database
    is there and the spool would only hide an overload."""


# What asyncpg and the OS raise when the database cannot be reached or drops the connection.
# InternalClientError ("cannot switch to state ...; another operation is in progress") is a
# connection left mid-operation when its server end was terminated: seen under `make faults`
# (connections terminated every second), where it was answered 500; another connection later
# does the work.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

# SQLSTATE classes and codes that say "not now" rather than "not this": connection (08),
# read-only (25006), authorisation (28), no such database (3D), rollback on conflict (40),
# resources (53: disk full, out of memory), lock not available (55P03), operator intervention
# (57: shutdown, cancel, database dropped), system (58: I/O). The provider should retry later.
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "3D", "40", "53", "57", "58"})
_UNAVAILABLE_CODES = frozenset({"25006", "55P03"})

# What the database refuses in the data itself (out of range, bad encoding, constraint, a value
# too large to index): retrying the same bytes cannot help.
_DATA_REFUSAL_CLASSES = frozenset({"22", "23", "54"})

# SQLSTATE class 40: the transaction lost a conflict with a concurrent writer (deadlock,
# serialisation); the same work alone, or again, may pass.
_CONFLICT_CLASS = "40"


def is_database_unavailable(error: BaseException) -> bool:
    """Whether to answer "retry later" (503) rather than fail."""
    if isinstance(error, asyncpg.PostgresError):
        code = str(error.sqlstate or "")
        return code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES
    return isinstance(error, _CONNECTION_ERRORS)


def is_data_refusal(error: BaseException) -> bool:
    return isinstance(error, asyncpg.PostgresError) and str(error.sqlstate or "")[:2] in (
        _DATA_REFUSAL_CLASSES
    )


def lost_conflict(error: BaseException) -> bool:
    return isinstance(error, asyncpg.PostgresError) and str(error.sqlstate or "").startswith(
        _CONFLICT_CLASS
    )
