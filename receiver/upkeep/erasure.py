"""`sms-receiver erase --number +44...`: a person's right to erasure. Every row that holds the
number is removed (raw callbacks, the person's replies, stored send answers) or anonymised (its
recipients, their events, the messages sent to it, which lose their text when sent to it alone)."""

from __future__ import annotations

import re

import phonenumbers

from receiver.storage.erasure import Erased, erase_number
from receiver.storage.pool import Connection


class NotANumber(ValueError):
    """What was given is not an E.164 number."""


def spellings(number: str) -> tuple[str, list[str]]:
    """The number in E.164, and the spellings a provider's payload may give it: E.164, without
    `+`, with `00`, URL-encoded, national (digits only)."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as error:
        raise NotANumber(f"{number!r} is not a number in E.164 (+ and the country code)") from error
    if not phonenumbers.is_possible_number(parsed):
        raise NotANumber(f"{number!r} is not a possible number")
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    national = re.sub(
        r"\D", "", phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    )
    digits = e164[1:]
    forms = [e164, digits, "00" + digits, "%2B" + digits]
    if len(national) >= 6:  # shorter would match unrelated digits
        forms.append(national)
    return e164, forms


async def erase(connection: Connection, number: str) -> Erased:
    e164, forms = spellings(number)
    return await erase_number(connection, e164, forms)
