"""What a database error means: "not now" (503, retry later) or "not this"."""

from __future__ import annotations

import asyncpg

from receiver.storage.errors import is_data_refusal, is_database_unavailable


def test_a_connection_left_mid_operation_is_not_now() -> None:
    # what asyncpg raised when a terminated connection was used again (make faults): a 500
    # before, a 503 the provider retries now
    error = asyncpg.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert is_database_unavailable(error)
    assert not is_data_refusal(error)


def test_a_terminated_connection_is_not_now() -> None:
    assert is_database_unavailable(asyncpg.ConnectionDoesNotExistError("closed"))
    assert is_database_unavailable(asyncpg.AdminShutdownError("terminating"))
