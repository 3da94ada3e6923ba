"""The loop of the hub's background tasks (silence sweep, held sends, upkeep): a step, then
a wait, until stopped; a failing step (the database away) is logged and tried again later."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog


async def repeat(
    log: structlog.stdlib.BoundLogger,
    name: str,
    step: Callable[[], Awaitable[bool]],
    interval_s: float,
    stopping: asyncio.Event,
) -> None:
    """Runs `step` until `stopping` is set: again at once when it says there is more to do
    (a full batch), else after `interval_s`. Logs `<name>_started`, `<name>_failed` (with the
    error, then waits as after a step with nothing more) and `<name>_stopped`."""
    log.info(f"{name}_started")
    while not stopping.is_set():
        try:
            more = await step()
        except Exception as error:  # the database is away, a lock not granted: next round
            log.warning(f"{name}_failed", error=repr(error))
            more = False
        if not more:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)
    log.info(f"{name}_stopped")
