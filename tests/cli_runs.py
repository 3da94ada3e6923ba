"""Running `sms-receiver` commands in a test, as an operator would, on the test database.

`main` runs each command with `asyncio.run`, so it is called in a thread of its own (the tests'
event loop is running); its logging set-up is left out, so that the session's logging does not
write to a test's captured output once it is closed."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import pytest

from receiver import cli
from receiver.cli import main


class Ran(NamedTuple):
    status: int
    out: str
    err: str


def commands_on(monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    """The commands reach the test database, as DATABASE_URL tells them."""
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)


async def cli_run(capsys: pytest.CaptureFixture[str], *argv: str) -> Ran:
    capsys.readouterr()  # what earlier commands printed is theirs
    status = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return Ran(status, out, err)
