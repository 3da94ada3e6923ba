"""The rules on values the API takes, each written once and shared by request bodies (as field
types) and query parameters: text without a NUL character (Postgres cannot hold one), and times
with a zone within the years a database and a JSON client agree on."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 30, tzinfo=UTC)


def has_nul(text: str) -> bool:
    return "\x00" in text


def in_years(moment: datetime) -> bool:
    """Whether a time with a zone lies from 1970 to 9999."""
    return EARLIEST <= moment <= LATEST


def no_nul(text: str) -> str:
    if has_nul(text):
        raise ValueError("must not contain a NUL character")
    return text


def plain_text(text: str) -> str:
    """Text the database can keep: no NUL, no lone surrogate (JSON can carry both)."""
    no_nul(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate is not)") from None
    return text


def _zoned(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("needs a time zone (use Z for UTC)")
    return moment


def _any_time(moment: datetime) -> datetime:
    if not in_years(_zoned(moment)):
        raise ValueError("must be between 1970 and 9999")
    return moment


def _past_time(moment: datetime) -> datetime:
    if not EARLIEST <= _zoned(moment) <= datetime.now(UTC):
        raise ValueError("must be between 1970 and now")
    return moment


Moment = Annotated[datetime, AfterValidator(_any_time)]
PastMoment = Annotated[datetime, AfterValidator(_past_time)]
